//! The per-host outcome of a run, in Ansible's vocabulary: ok / changed / failed / unreachable /
//! skipped, with a reason for each that is not ok.
use std::collections::BTreeMap;

use comfy_table::{Cell, Color, Table};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    /// Something was pushed or rewritten on the host.
    Changed(Vec<String>),
    Failed(String),
    Unreachable(String),
    /// Not acted on (e.g. a container, covered by its parent's observer).
    Skipped(String),
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Changed(_) => "changed",
            Outcome::Failed(_) => "failed",
            Outcome::Unreachable(_) => "unreachable",
            Outcome::Skipped(_) => "skipped",
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::Unreachable(_))
    }
}

/// Outcomes by host, in inventory order, and what each step changed. Serializable: a detached
/// session keeps it on disk so that `latplan stop` can finish the recap of a dead collector.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Recap {
    order: Vec<String>,
    outcomes: BTreeMap<String, Outcome>,
}

impl Recap {
    pub fn new(order: impl IntoIterator<Item = String>) -> Recap {
        let order: Vec<String> = order.into_iter().collect();
        let outcomes = order.iter().map(|h| (h.clone(), Outcome::Ok)).collect();
        Recap { order, outcomes }
    }

    /// Records an outcome; a failure is never overwritten by a later, milder one.
    pub fn set(&mut self, host: &str, o: Outcome) {
        let cur = self.outcomes.entry(host.to_string()).or_insert(Outcome::Ok);
        if !cur.is_failure() {
            if let (Outcome::Changed(old), Outcome::Changed(new)) = (&mut *cur, &o) {
                old.extend(new.iter().cloned());
            } else if !(matches!(cur, Outcome::Changed(_)) && o == Outcome::Ok) {
                *cur = o;
            }
        }
        if !self.order.iter().any(|h| h == host) {
            self.order.push(host.to_string());
        }
    }

    pub fn get(&self, host: &str) -> Option<&Outcome> {
        self.outcomes.get(host)
    }

    pub fn failed_hosts(&self) -> Vec<&str> {
        self.order
            .iter()
            .filter(|h| self.outcomes[*h].is_failure())
            .map(String::as_str)
            .collect()
    }

    /// Hosts still in the run (not failed, not unreachable, not skipped).
    pub fn healthy(&self) -> impl Iterator<Item = &str> {
        self.order
            .iter()
            .filter(|h| matches!(self.outcomes[*h], Outcome::Ok | Outcome::Changed(_)))
            .map(String::as_str)
    }

    pub fn count(&self, word: &str) -> usize {
        self.outcomes.values().filter(|o| o.word() == word).count()
    }

    pub fn render(&self) -> String {
        let mut t = Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(["host", "result", "detail"]);
        for h in &self.order {
            let o = &self.outcomes[h];
            let color = match o {
                Outcome::Ok => Color::Green,
                Outcome::Changed(_) => Color::Yellow,
                Outcome::Skipped(_) => Color::Grey,
                _ => Color::Red,
            };
            let detail = match o {
                Outcome::Ok => String::new(),
                Outcome::Changed(what) => what.join(", "),
                Outcome::Failed(r) | Outcome::Unreachable(r) | Outcome::Skipped(r) => r.clone(),
            };
            t.add_row([
                Cell::new(h),
                Cell::new(o.word()).fg(color),
                Cell::new(detail),
            ]);
        }
        format!(
            "{t}\nrecap: ok={} changed={} failed={} unreachable={} skipped={}",
            self.count("ok"),
            self.count("changed"),
            self.count("failed"),
            self.count("unreachable"),
            self.count("skipped")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_stick_and_changes_accumulate() {
        let mut r = Recap::new(["a".to_string(), "b".to_string()]);
        r.set("a", Outcome::Changed(vec!["bin/observer".into()]));
        r.set("a", Outcome::Changed(vec!["bin/timesync".into()]));
        r.set("a", Outcome::Ok);
        assert_eq!(
            r.get("a"),
            Some(&Outcome::Changed(vec![
                "bin/observer".into(),
                "bin/timesync".into()
            ]))
        );
        r.set("b", Outcome::Unreachable("refused".into()));
        r.set("b", Outcome::Ok);
        assert_eq!(r.get("b").unwrap().word(), "unreachable");
        assert_eq!(r.failed_hosts(), vec!["b"]);
        assert_eq!(r.healthy().collect::<Vec<_>>(), vec!["a"]);
        let text = r.render();
        assert!(
            text.contains("recap: ok=0 changed=1 failed=0 unreachable=1 skipped=0"),
            "{text}"
        );
        // A detached session keeps it on disk for `latplan stop`: it comes back the same.
        let back: Recap = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.render(), text);
    }
}
