//! Lab integration tests of labtools (need `ci/lab up`).
