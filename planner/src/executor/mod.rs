//! Runs a measurement session across hosts. One dispatcher owns the session's state (each host's
//! phase and outcome); per-host workers report to it over a bounded channel, and it alone prints
//! progress. The steps themselves live in one module each:
//! [`converge`] (facts → diff → push), [`clocks`] (reflectors, prober, sync gate),
//! [`observe`] (observers streaming into the collector), [`teardown`].
pub mod clocks;
pub mod converge;
pub mod observe;
pub mod observe_redis;
pub mod recap;
pub mod steps;
pub mod teardown;

pub use recap::{Outcome, Recap};
