//! Lab tests of `latplan check` (and `plan`) against the network-namespace lab (`ci/lab up`).
//! They run the real binary over real SSH; they need root, the lab, and the static observer in
//! the artifacts directory. They hold the lab lock and restore everything they break.
mod check;
mod transport;
