//! `latplan inventory list INVENTORY [--format json|table]`: the resolved inventory.
//!
//! The JSON is a contract (team-notes, docs/cli.md): ci/lab reads it with jq.
use std::path::PathBuf;

use super::{Command, Global, Outcome, print_out};
use crate::inventory;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print every host with its inherited settings, and the session settings.
    List {
        /// Inventory directory (hosts.yaml, group_vars/, host_vars/) or file.
        inventory: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Json,
    Table,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        match self.action {
            Action::List {
                inventory: path,
                format,
            } => {
                let inv = load(&path)?;
                match format {
                    Format::Json => print_out(&serde_json::to_string_pretty(&inv.to_json())?)?,
                    Format::Table => print_out(&table(&inv).to_string())?,
                }
                Ok(Outcome::Success)
            }
        }
    }
}

/// Loads an inventory with the error context every subcommand uses.
pub fn load(path: &std::path::Path) -> anyhow::Result<inventory::Inventory> {
    // Inventory errors already name their file (and line); other context would repeat it.
    inventory::load(path).map_err(|e| anyhow::anyhow!("invalid inventory: {e}"))
}

fn table(inv: &inventory::Inventory) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "host",
        "kind",
        "parent",
        "address",
        "interfaces",
        "clock domain",
        "groups",
    ]);
    for h in inv.hosts() {
        t.add_row([
            h.name.clone(),
            h.kind.as_str().to_string(),
            h.parent.clone().unwrap_or_default(),
            h.address
                .clone()
                .or_else(|| h.ssh.as_ref().and_then(|s| s.config_alias.clone()))
                .unwrap_or_default(),
            h.interfaces.join(",")
                + &h.host_interface
                    .as_ref()
                    .map(|i| format!(" (host side {i})"))
                    .unwrap_or_default(),
            h.clock_domain.clone(),
            h.groups.join(","),
        ]);
    }
    t
}
