//! The inventory: YAML files → validated [`Inventory`] (docs/inventory.md).
//!
//! An inventory is a directory (`hosts.yaml` or `hosts.yml`, optional `group_vars/NAME.yaml` and
//! `host_vars/NAME.yaml`) or a single YAML file. Loading either returns a fully checked model or
//! the first problem found, with file:line:column and a hint; nothing runs on a bad inventory.
mod error;
pub mod import;
mod merge;
mod model;
mod resolve;
mod session;
mod source;
pub mod steps;
mod tree;
mod values;

use std::path::{Path, PathBuf};

use marked_yaml::Node;

pub use error::{InventoryError, Location};
pub use model::*;
pub use session::{BUS_PASSWORD_ENV, STORE_PASSWORD_ENV, read_secret_file};
pub use steps::{StepAction, UserStep};
pub use tree::valid_name;

use source::Sources;
use tree::{ALL, Tree, expect_mapping, reject_secrets};

/// Loads and validates an inventory directory or file.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let mut src = Sources::default();
    let (hosts_file, dir) = locate(path)?;
    let root = src.parse_file(&hosts_file)?;
    finish(src, root, dir, path)
}

fn finish(
    mut src: Sources,
    root: Node,
    dir: Option<PathBuf>,
    path: &Path,
) -> Result<Inventory, InventoryError> {
    reject_secrets(&src, &root)?;
    let mut tree = Tree::collect(&src, &root)?;

    if let Some(dir) = &dir {
        for VarsFile { name, node, path } in vars_dir(&mut src, &dir.join("group_vars"))? {
            let Some(g) = tree.groups.get_mut(&name) else {
                return Err(InventoryError::new(None, format!("{}: no group `{name}` in the inventory", path.display()))
                    .hint("name group_vars files after a group of hosts.yaml (or all.yaml for every host)"));
            };
            g.vars.push(node);
        }
        for VarsFile { name, node, path } in vars_dir(&mut src, &dir.join("host_vars"))? {
            let Some(h) = tree.hosts.get_mut(&name) else {
                return Err(InventoryError::new(
                    None,
                    format!("{}: no host `{name}` in the inventory", path.display()),
                )
                .hint("name host_vars files after a host listed in hosts.yaml"));
            };
            h.own.push(node);
        }
    }

    // `session` lives only in all's vars; it is split off before hosts inherit all's vars.
    let mut all_vars = Vec::new();
    let mut session_layers = Vec::new();
    for v in &tree.groups[ALL].vars {
        let mut v = v.clone();
        if let Some(m) = v.as_mapping_mut()
            && let Some(s) = m.remove("session")
        {
            expect_mapping(&src, &s, "`session`")?;
            session_layers.push(s);
        }
        all_vars.push(v);
    }
    let hosts = resolve::resolve_hosts(&src, &tree, &all_vars)?;
    let session = session::resolve_session(&mut src, session_layers)?;
    let mut inv = Inventory {
        hosts,
        session,
        order: tree.order.clone(),
        source: path.to_path_buf(),
        steps: Vec::new(),
    };
    // The user's steps are rendered with the resolved hosts, so they come last.
    if let Some(f) = dir.as_deref().and_then(steps::find) {
        inv.steps = steps::load(&mut src, &f, &inv)?;
    }
    Ok(inv)
}

/// Loads a single-file inventory from text (`name` is used in error locations).
pub fn load_str(name: &str, text: &str) -> Result<Inventory, InventoryError> {
    let mut src = Sources::default();
    let root = src.parse_str(PathBuf::from(name), text)?;
    finish(src, root, None, Path::new(name))
}

/// The hosts file, and the directory holding group_vars/ and host_vars/ (directory form only).
fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>), InventoryError> {
    if path.is_dir() {
        for name in ["hosts.yaml", "hosts.yml"] {
            let f = path.join(name);
            if f.is_file() {
                return Ok((f, Some(path.to_path_buf())));
            }
        }
        return Err(InventoryError::new(None, format!("{}: no hosts.yaml in this directory", path.display()))
            .hint("an inventory directory holds hosts.yaml (and optionally group_vars/, host_vars/); see docs/inventory.md"));
    }
    if path.is_file() {
        return Ok((path.to_path_buf(), None));
    }
    Err(InventoryError::new(
        None,
        format!("{}: no such inventory file or directory", path.display()),
    ))
}

/// A vars file: the name it is for (file stem), its root node, its path.
struct VarsFile {
    name: String,
    node: Node,
    path: PathBuf,
}

/// Reads every NAME.yaml / NAME.yml of a vars directory (missing directory = none).
fn vars_dir(src: &mut Sources, dir: &Path) -> Result<Vec<VarsFile>, InventoryError> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut out: Vec<VarsFile> = Vec::new();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("yaml" | "yml")) || !f.is_file() {
            continue;
        }
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if out.iter().any(|v| v.name == name) {
            return Err(InventoryError::new(
                None,
                format!(
                    "{}: `{name}` has both a .yaml and a .yml file",
                    dir.display()
                ),
            )
            .hint("keep one of them"));
        }
        let node = src.parse_file(&f)?;
        reject_secrets(src, &node)?;
        expect_mapping(src, &node, &format!("{}", f.display()))?;
        out.push(VarsFile {
            name,
            node,
            path: f,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
