//! The host tree: clock domains, parent links, and the path a byte takes between two hosts.
use super::input::{HostInfo, HostKind};
use std::collections::HashMap;

/// Hosts by index, with parents resolved. Hosts that samples mention but the inventory does not
/// are added as parentless metals so nothing is dropped.
#[derive(Debug, Clone)]
pub struct Topology {
    pub hosts: Vec<HostInfo>,
    parent: Vec<Option<usize>>,
    domain: Vec<String>,
    by_name: HashMap<String, usize>,
}

impl Topology {
    pub fn new(hosts: &[HostInfo]) -> Topology {
        let mut t = Topology {
            hosts: Vec::new(),
            parent: Vec::new(),
            domain: Vec::new(),
            by_name: HashMap::new(),
        };
        for h in hosts {
            t.push(h.clone());
        }
        t.resolve();
        t
    }

    fn push(&mut self, h: HostInfo) -> usize {
        let i = self.hosts.len();
        self.by_name.insert(h.name.clone(), i);
        self.hosts.push(h);
        i
    }

    fn resolve(&mut self) {
        self.parent = self
            .hosts
            .iter()
            .map(|h| h.parent.as_ref().and_then(|p| self.by_name.get(p).copied()))
            .collect();
        self.domain = (0..self.hosts.len())
            .map(|i| self.resolve_domain(i))
            .collect();
    }

    /// A container shares its parent's kernel; an empty domain inherits the parent's; a host
    /// with neither is its own domain.
    fn resolve_domain(&self, mut i: usize) -> String {
        for _ in 0..=self.hosts.len() {
            let h = &self.hosts[i];
            if !h.clock_domain.is_empty() && h.kind != HostKind::Container {
                return h.clock_domain.clone();
            }
            match self.parent[i] {
                Some(p) => i = p,
                None => {
                    return if h.clock_domain.is_empty() {
                        h.name.clone()
                    } else {
                        h.clock_domain.clone()
                    };
                }
            }
        }
        self.hosts[i].name.clone()
    }

    /// The index of `name`, adding an unknown host (as a parentless metal) if needed.
    pub fn intern(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.push(HostInfo {
            name: name.to_string(),
            kind: HostKind::Metal,
            parent: None,
            clock_domain: String::new(),
            host_interface: None,
            addresses: Vec::new(),
        });
        self.resolve();
        i
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }

    pub fn domain(&self, i: usize) -> &str {
        &self.domain[i]
    }

    pub fn parent(&self, i: usize) -> Option<usize> {
        self.parent[i]
    }

    /// Whether one host is the other's parent: the hop between them is virtual (VM ↔ metal,
    /// container ↔ its parent), not the network.
    pub fn is_virtual_hop(&self, a: usize, b: usize) -> bool {
        self.parent[a] == Some(b) || self.parent[b] == Some(a)
    }

    fn ancestors(&self, mut i: usize) -> Vec<usize> {
        let mut v = vec![i];
        while let Some(p) = self.parent[i] {
            if v.contains(&p) {
                break; // a cycle in bad input: stop rather than loop
            }
            v.push(p);
            i = p;
        }
        v
    }

    /// Hosts a byte passes from `src` to `dst`: up the tree from the sender, across (to the
    /// common ancestor or over the network between roots), down to the receiver.
    pub fn path(&self, src: usize, dst: usize) -> Vec<usize> {
        let up = self.ancestors(src);
        let down = self.ancestors(dst);
        if let Some(pos) = up.iter().position(|h| down.contains(h)) {
            let common = up[pos];
            let mut path: Vec<usize> = up[..=pos].to_vec();
            let dpos = down
                .iter()
                .position(|&h| h == common)
                .expect("common ancestor is in both");
            path.extend(down[..dpos].iter().rev());
            path
        } else {
            let mut path = up;
            path.extend(down.iter().rev());
            path
        }
    }

    /// The host that owns an address, if exactly one does.
    pub fn owner_of(&self, ip: std::net::IpAddr) -> Option<usize> {
        let mut found = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.addresses.contains(&ip))
            .map(|(i, _)| i);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn host(name: &str, kind: HostKind, parent: Option<&str>, domain: &str) -> HostInfo {
        HostInfo {
            name: name.into(),
            kind,
            parent: parent.map(Into::into),
            clock_domain: domain.into(),
            host_interface: None,
            addresses: Vec::new(),
        }
    }

    fn lab() -> Topology {
        Topology::new(&[
            host("metal1", HostKind::Metal, None, "d1"),
            host("metal2", HostKind::Metal, None, "d2"),
            host("vm1", HostKind::Vm, Some("metal1"), "dv1"),
            host("vm2", HostKind::Vm, Some("metal2"), "dv2"),
            host("ct1", HostKind::Container, Some("metal1"), ""),
            host("ct2", HostKind::Container, Some("vm2"), "ignored"),
        ])
    }

    #[test]
    fn paths_go_up_across_and_down() {
        let t = lab();
        let names = |p: Vec<usize>| {
            p.into_iter()
                .map(|i| t.name(i).to_string())
                .collect::<Vec<_>>()
        };
        let i = |n| t.index(n).unwrap();
        assert_eq!(
            names(t.path(i("ct1"), i("ct2"))),
            ["ct1", "metal1", "metal2", "vm2", "ct2"]
        );
        assert_eq!(names(t.path(i("vm1"), i("ct1"))), ["vm1", "metal1", "ct1"]);
        assert_eq!(
            names(t.path(i("metal1"), i("metal2"))),
            ["metal1", "metal2"]
        );
        assert_eq!(names(t.path(i("vm2"), i("metal2"))), ["vm2", "metal2"]);
    }

    #[test]
    fn containers_use_their_kernels_clock_domain() {
        let t = lab();
        assert_eq!(t.domain(t.index("ct1").unwrap()), "d1");
        assert_eq!(t.domain(t.index("ct2").unwrap()), "dv2");
        assert!(t.is_virtual_hop(t.index("vm2").unwrap(), t.index("metal2").unwrap()));
        assert!(!t.is_virtual_hop(t.index("metal1").unwrap(), t.index("metal2").unwrap()));
    }
}
