//! A user-space L2 relay between two interfaces with a one-way delay and a loss rate per
//! direction, changeable at runtime. The lab puts it where netem would go (this kernel has none):
//! in the wan router namespace between the metals, and optionally on a vm's link to its metal.
//!
//! Directions: `a2b` carries frames that arrive on interface `a` out of `b`; `b2a` the reverse.
pub mod clock;
pub mod ctl;
pub mod packet;
pub mod run;
pub mod shaper;

pub use ctl::{Dir, DirStatus, Request, Status};
