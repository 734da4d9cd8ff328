fn main() { let _o = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/timesync")); }
