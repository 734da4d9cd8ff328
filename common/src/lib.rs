//! Types shared by latplan's kernel programs and its user-space programs.
//!
//! Everything the kernel writes and user space reads is `#[repr(C)]` with explicit padding and a
//! size assertion, so both sides agree byte for byte. The `std` feature adds the framed wire format
//! that observers stream to the collector ([`wire`]) and clock-fit conversion ([`clock`]).
#![cfg_attr(not(feature = "std"), no_std)]

pub mod kernel;
pub mod layer;

#[cfg(feature = "std")]
pub mod clock;
#[cfg(feature = "std")]
pub mod wire;

pub use layer::{Direction, Layer};
