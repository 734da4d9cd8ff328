//! Pairs replies with the probes they answer: lost, duplicated, late, reordered and foreign
//! replies are told apart here, without any I/O, so that the rules are unit-tested.
use std::collections::{HashMap, VecDeque};

/// What a received reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first reply to an outstanding probe of domain `.0`: use it.
    Fresh(usize),
    /// Another reply to a probe already answered.
    Duplicate(usize),
    /// A reply to a probe already counted lost.
    Late(usize),
    /// Not a reply to any probe of ours (unknown id, or from the wrong address).
    Foreign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Replied,
    Lost,
}

/// Outstanding probes and the recent outcomes, by probe id. Order of arrival does not matter:
/// replies are matched by id.
#[derive(Debug)]
pub struct Matcher {
    loss_timeout_ns: u64,
    /// How long outcomes are remembered, to tell duplicates and late replies from foreign ones.
    memory_ns: u64,
    pending: HashMap<u64, usize>,
    sent_order: VecDeque<(u64, u64)>,
    finished: HashMap<u64, (usize, Outcome)>,
    finished_order: VecDeque<(u64, u64)>,
}

impl Matcher {
    pub fn new(loss_timeout_ns: u64) -> Matcher {
        Matcher {
            loss_timeout_ns,
            memory_ns: 10 * loss_timeout_ns.max(1_000_000_000),
            pending: HashMap::new(),
            sent_order: VecDeque::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
        }
    }

    /// Probe `id` to domain `domain` left at `now`.
    pub fn sent(&mut self, id: u64, domain: usize, now: u64) {
        self.pending.insert(id, domain);
        self.sent_order.push_back((now, id));
    }

    /// The probes whose loss timeout has passed at `now`, as (id, domain); they are now lost.
    pub fn expire(&mut self, now: u64) -> Vec<(u64, usize)> {
        let mut lost = Vec::new();
        while let Some(&(t, id)) = self.sent_order.front() {
            if t + self.loss_timeout_ns > now {
                break;
            }
            self.sent_order.pop_front();
            if let Some(d) = self.pending.remove(&id) {
                self.finish(id, d, Outcome::Lost, now);
                lost.push((id, d));
            }
        }
        while self
            .finished_order
            .front()
            .is_some_and(|(t, _)| *t + self.memory_ns < now)
        {
            let (_, id) = self.finished_order.pop_front().expect("front exists");
            self.finished.remove(&id);
        }
        lost
    }

    /// A reply to `id` arrived at `now`; `from_domain_address(d)` says whether its sender is
    /// domain d's reflector.
    pub fn reply(
        &mut self,
        id: u64,
        now: u64,
        from_domain_address: impl Fn(usize) -> bool,
    ) -> Verdict {
        if let Some(&d) = self.pending.get(&id) {
            if !from_domain_address(d) {
                // Someone else answering with our id and token: no evidence about this domain.
                return Verdict::Foreign;
            }
            self.pending.remove(&id);
            self.finish(id, d, Outcome::Replied, now);
            return Verdict::Fresh(d);
        }
        match self.finished.get(&id) {
            Some(&(d, Outcome::Replied)) => Verdict::Duplicate(d),
            Some(&(d, Outcome::Lost)) => Verdict::Late(d),
            None => Verdict::Foreign,
        }
    }

    /// Probes still waiting for a reply.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    fn finish(&mut self, id: u64, d: usize, o: Outcome, now: u64) {
        self.finished.insert(id, (d, o));
        self.finished_order.push_back((now, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn replies_in_any_order_are_matched_once() {
        let mut m = Matcher::new(S);
        for id in 0..5 {
            m.sent(id, (id % 2) as usize, id * 10);
        }
        for id in [4, 1, 3, 0, 2] {
            assert_eq!(
                m.reply(id, 100, |_| true),
                Verdict::Fresh((id % 2) as usize)
            );
        }
        assert_eq!(m.reply(3, 110, |_| true), Verdict::Duplicate(1));
        assert_eq!(m.outstanding(), 0);
        assert!(m.expire(10 * S).is_empty());
    }

    #[test]
    fn unanswered_probes_are_lost_and_their_late_replies_recognised() {
        let mut m = Matcher::new(S);
        m.sent(7, 2, 0);
        m.sent(8, 2, S / 2);
        assert!(m.expire(S - 1).is_empty());
        assert_eq!(m.expire(S), vec![(7, 2)]);
        assert_eq!(m.reply(7, S + 5, |_| true), Verdict::Late(2));
        assert_eq!(m.reply(8, S + 5, |_| true), Verdict::Fresh(2));
        // Outcomes are forgotten after a while: then an old id is just foreign.
        m.expire(100 * S);
        assert_eq!(m.reply(7, 100 * S, |_| true), Verdict::Foreign);
    }

    #[test]
    fn unknown_ids_and_wrong_senders_are_foreign() {
        let mut m = Matcher::new(S);
        m.sent(1, 0, 0);
        assert_eq!(m.reply(99, 1, |_| true), Verdict::Foreign);
        assert_eq!(m.reply(1, 1, |_| false), Verdict::Foreign);
        // The real reply still counts afterwards.
        assert_eq!(m.reply(1, 2, |_| true), Verdict::Fresh(0));
    }
}
