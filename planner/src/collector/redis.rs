//! (redis bus: being written)
