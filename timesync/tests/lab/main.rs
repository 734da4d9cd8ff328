//! Lab tests of timesync (need `ci/lab up`, root).
