//! The observer's sink module as the observer crate has it: its `Sink` trait (mirrored from
//! observer/src/sink/mod.rs, same signatures) and the Redis sink file itself, compiled here so the
//! tests exercise the observer's own code.
pub trait Sink: Send {
    fn write_frame(&mut self, frame: &[u8]) -> anyhow::Result<()>;
    fn flush(&mut self) -> anyhow::Result<()>;
}

#[path = "../../../observer/src/sink/redis.rs"]
#[allow(
    dead_code,
    reason = "the tests use only part of the observer sink's API"
)]
pub mod redis;
