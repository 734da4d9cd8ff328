//! Renders an [`Analysis`](crate::analysis::Analysis): a terminal table, JSON, CSV, or one
//! self-contained HTML file with plots. Pure: every renderer returns a string.
pub mod csv;
pub mod fmt;
pub mod html;
pub mod plots;
pub mod table;

#[cfg(test)]
mod browser_test;
#[cfg(test)]
mod tests;

use crate::analysis::Analysis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    Html,
}

/// Options of the terminal table.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOptions {
    /// A breakdown table for every flow, not only per host pair.
    pub per_flow: bool,
    /// Terminal colours and bold (off for files and pipes).
    pub styled: bool,
}

pub fn render(a: &Analysis, format: Format, table: TableOptions) -> anyhow::Result<String> {
    Ok(match format {
        Format::Table => table::render(a, table),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(a)?;
            s.push('\n');
            s
        }
        Format::Csv => csv::render(a)?,
        Format::Html => html::render(a),
    })
}
