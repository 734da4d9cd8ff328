//! Helpers for the lab and for tests that run on it.
pub mod testlab;
