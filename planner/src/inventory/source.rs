//! Reading YAML files into marked nodes, remembering which file each source id is, so that any
//! node (even after merging nodes from several files) can be traced back to file:line:column.
use std::path::{Path, PathBuf};

use marked_yaml::{LoadError, LoaderOptions, Marker, Node, Span};

use super::error::{InventoryError, Location, Result};

/// The files (and embedded defaults) nodes came from, indexed by marked-yaml's source id.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<PathBuf>,
}

impl Sources {
    /// Where a span starts, if it has a start (nodes we build ourselves may not).
    pub fn locate(&self, span: &Span) -> Option<Location> {
        span.start().map(|m| self.marker(m))
    }

    pub fn marker(&self, m: &Marker) -> Location {
        Location {
            file: self
                .files
                .get(m.source())
                .cloned()
                .unwrap_or_else(|| PathBuf::from("<unknown>")),
            line: m.line(),
            column: m.column(),
        }
    }

    /// An error located at `span`.
    pub fn error(&self, span: &Span, message: impl Into<String>) -> InventoryError {
        InventoryError::new(self.locate(span), message)
    }

    /// Reads and parses one file. An empty file is an empty mapping (an empty group_vars file is fine).
    pub fn parse_file(&mut self, path: &Path) -> Result<Node> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InventoryError::new(None, format!("failed to read {}: {e}", path.display()))
        })?;
        self.parse_str(path.to_path_buf(), &text)
    }

    /// Parses text that claims to come from `name` (a path, or a label such as `<embedded conf/x.yaml>`).
    pub fn parse_str(&mut self, name: PathBuf, text: &str) -> Result<Node> {
        let id = self.files.len();
        self.files.push(name);
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
        {
            let start = Marker::new(id, 0, 1, 1);
            return Ok(Node::Mapping(
                marked_yaml::types::MarkedMappingNode::new_empty(Span::new_start(start)),
            ));
        }
        let opts = LoaderOptions::default().error_on_duplicate_keys(true);
        marked_yaml::parse_yaml_with_options(id, text, opts).map_err(|e| self.load_error(e))
    }

    /// Reads a file whose top level is a list (the steps file).
    pub fn parse_sequence_file(&mut self, path: &Path) -> Result<Node> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InventoryError::new(None, format!("failed to read {}: {e}", path.display()))
        })?;
        let id = self.files.len();
        self.files.push(path.to_path_buf());
        let opts = LoaderOptions::default()
            .toplevel_sequence()
            .error_on_duplicate_keys(true);
        marked_yaml::parse_yaml_with_options(id, &text, opts).map_err(|e| match e {
            LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
                InventoryError::new(
                    Some(self.marker(&m)),
                    "the top level of a steps file must be a list of plays",
                )
                .hint("start with `- hosts: NAME` and `steps:` under it (docs/inventory.md)")
            }
            e => self.load_error(e),
        })
    }

    fn load_error(&self, e: LoadError) -> InventoryError {
        match e {
            LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
                InventoryError::new(Some(self.marker(&m)), "the top level of an inventory file must be a mapping")
                    .hint("start with `all:` (hosts.yaml) or with `key: value` lines (group_vars/, host_vars/)")
            }
            LoadError::UnexpectedAnchor(m) => {
                InventoryError::new(Some(self.marker(&m)), "YAML anchors and aliases are not supported")
                    .hint("put shared settings in a group's `vars:` (or group_vars/) and let hosts inherit them")
            }
            LoadError::MappingKeyMustBeScalar(m) => {
                InventoryError::new(Some(self.marker(&m)), "mapping keys must be plain strings")
            }
            LoadError::UnexpectedTag(m) => {
                InventoryError::new(Some(self.marker(&m)), "YAML tags (`!tag`) are not supported")
                    .hint("remove the tag; write the value as a plain scalar")
            }
            LoadError::ScanError(m, e) => {
                InventoryError::new(Some(self.marker(&m)), format!("invalid YAML: {}", e.info()))
            }
            LoadError::DuplicateKey(inner) => {
                let first = self.locate(inner.prev_key.span());
                let msg = match first {
                    Some(f) => format!("duplicate key `{}` (first at line {}, column {})", inner.key.as_str(), f.line, f.column),
                    None => format!("duplicate key `{}`", inner.key.as_str()),
                };
                InventoryError::new(self.locate(inner.key.span()), msg)
                    .hint("each key may appear once in a mapping; merge the two entries into one")
            }
        }
    }
}
