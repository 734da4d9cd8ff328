//! Inventory errors: every one names the file, line and column it comes from (when it comes from a
//! file) and, where we can tell, a hint saying how to fix it.
use std::fmt;
use std::path::PathBuf;

/// A place in an inventory file (1-based line and column, as editors count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Why an inventory was refused. Loading stops at the first one; nothing runs on a bad inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryError {
    pub location: Option<Location>,
    /// Lower-case, fits after "invalid inventory: ".
    pub message: String,
    pub hint: Option<String>,
}

impl InventoryError {
    pub fn new(location: Option<Location>, message: impl Into<String>) -> Self {
        Self {
            location,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InventoryError {}

pub type Result<T, E = InventoryError> = std::result::Result<T, E>;
