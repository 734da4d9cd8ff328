//! Helpers for the lab: the delay/loss relay (`lab-relay`), the traffic generator (`lab-traffic`)
//! and what integration tests need to use the lab made by `ci/lab up` (docs/lab.md).
pub mod clockecho;
pub mod queuelog;
pub mod relay;
pub mod testlab;
pub mod traffic;
pub mod txstamp;
pub mod units;
