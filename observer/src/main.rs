fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));
    let _ebpf = aya::Ebpf::load(obj).expect("load");
    println!("loaded {} bytes", obj.len());
}
