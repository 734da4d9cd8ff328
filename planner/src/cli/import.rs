//! `latplan import CONF_DIR -o INVENTORY_DIR`: converts the original tool's configuration.
use std::path::PathBuf;

use super::{Command, Global, Outcome};
use crate::inventory::import;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The original tool's configuration directory (connect_info.yaml, sampling_info.yaml, …).
    conf_dir: PathBuf,
    /// Inventory directory to write (hosts.yaml).
    #[arg(short, long, value_name = "INVENTORY_DIR")]
    output: PathBuf,
    /// Replace an existing hosts.yaml.
    #[arg(long)]
    force: bool,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        let imported = import::convert(&self.conf_dir)?;
        let file = import::write(&imported, &self.output, self.force)?;
        for w in &imported.warnings {
            eprintln!("warning: {w}");
        }
        eprintln!(
            "wrote {}; next: `latplan check {}`",
            file.display(),
            self.output.display()
        );
        Ok(Outcome::Success)
    }
}
