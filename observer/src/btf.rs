//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the byte
//! offset of a struct member by path (`__sk_common.skc_net.net`), looking through anonymous
//! structs/unions and typedefs. The kernel programs get their field offsets from here, because
//! Rust eBPF has no CO-RE relocations and offsets change between kernel builds.
use anyhow::{Context, Result, bail};
use latplan_common::kernel::KernelOffsets;

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    name_off: u32,
    kind: u32,
    /// Referenced type for typedef/const/volatile/restrict/type_tag/ptr.
    type_ref: u32,
    members: Vec<Member>,
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// The same BTF as aya reads it: loading a `tp_btf` program names its tracepoint's BTF id.
    kernel: aya::Btf,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path)
            .with_context(|| format!("failed to read {path} (kernel without BTF?)"))?;
        Btf::parse(&data).with_context(|| format!("failed to parse {path}"))
    }

    pub fn parse(data: &[u8]) -> Result<Btf> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2).context("truncated BTF")?.try_into()?,
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4).context("truncated BTF")?.try_into()?,
            ))
        };
        if u16_at(0)? != BTF_MAGIC {
            bail!("not BTF data (bad magic)");
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = hdr_len + u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = hdr_len + u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let strings = data
            .get(str_off..str_off + str_len)
            .context("BTF string section out of range")?
            .to_vec();
        // Type id 0 is "void"; real types start at 1.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            type_ref: 0,
            members: Vec::new(),
        }];
        let mut p = type_off;
        let end = type_off + type_len;
        while p < end {
            let name_off = u32_at(p)?;
            let info = u32_at(p + 4)?;
            let size_or_type = u32_at(p + 8)?;
            p += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
                KIND_ARRAY => p += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let off = u32_at(m + 8)?;
                        members.push(Member {
                            name_off: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            bit_offset: if kflag { off & 0x00ff_ffff } else { off },
                        });
                    }
                    p += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => p += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => p += vlen * 12,
                _ => {}
            }
            types.push(Type {
                name_off,
                kind,
                type_ref: size_or_type,
                members,
            });
        }
        let kernel = aya::Btf::parse(data, aya::Endianness::default())
            .context("aya could not read this BTF")?;
        Ok(Btf {
            types,
            strings,
            kernel,
        })
    }

    fn name(&self, off: u32) -> &str {
        let s = &self.strings[(off as usize).min(self.strings.len())..];
        let n = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..n]).unwrap_or("")
    }

    fn struct_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT && !t.members.is_empty() && self.name(t.name_off) == name
            })
            .map(|i| i as u32)
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let t = &self.types[id as usize];
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.type_ref
                }
                _ => return id,
            }
        }
        id
    }

    /// Bit offset and type of member `name` of composite type `id`, searching anonymous members.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let t = self.types.get(self.strip(id) as usize)?;
        for m in &t.members {
            let mname = self.name(m.name_off);
            if mname == name {
                return Some((m.bit_offset, m.type_id));
            }
            if mname.is_empty() {
                let inner = self.strip(m.type_id);
                if matches!(self.types[inner as usize].kind, KIND_STRUCT | KIND_UNION)
                    && let Some((off, ty)) = self.member(inner, name)
                {
                    return Some((m.bit_offset + off, ty));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (dot-separated members) inside `struct NAME`.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32> {
        let mut id = self
            .struct_id(strukt)
            .with_context(|| format!("struct {strukt} not in kernel BTF"))?;
        let mut bits = 0;
        for part in path.split('.') {
            let (off, ty) = self
                .member(id, part)
                .with_context(|| format!("member {part} of {strukt}.{path} not in kernel BTF"))?;
            bits += off;
            id = ty;
        }
        if bits % 8 != 0 {
            bail!("{strukt}.{path} is a bitfield (bit offset {bits})");
        }
        Ok(bits / 8)
    }

    /// Whether a raw tracepoint `name` exists (its `btf_trace_NAME` typedef is in BTF).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        let want = format!("btf_trace_{name}");
        self.types
            .iter()
            .any(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == want)
    }

    /// The BTF in aya's form, for loading BTF-typed tracepoint programs.
    pub fn kernel(&self) -> &aya::Btf {
        &self.kernel
    }

    /// Every offset the kernel programs read, resolved for the running kernel.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets> {
        let skb = |p: &str| self.offset_of("sk_buff", p);
        let sock = |p: &str| self.offset_of("sock", p);
        let tcp = |p: &str| self.offset_of("tcp_sock", p);
        Ok(KernelOffsets {
            skb_head: skb("head")?,
            skb_data: skb("data")?,
            skb_len: skb("len")?,
            skb_network_header: skb("network_header")?,
            skb_transport_header: skb("transport_header")?,
            skb_dev: skb("dev")?,
            dev_ifindex: self.offset_of("net_device", "ifindex")?,
            dev_nd_net: self.offset_of("net_device", "nd_net.net")?,
            net_inum: self.offset_of("net", "ns.inum")?,
            sk_net: sock("__sk_common.skc_net.net")?,
            sk_family: sock("__sk_common.skc_family")?,
            sk_daddr: sock("__sk_common.skc_daddr")?,
            sk_rcv_saddr: sock("__sk_common.skc_rcv_saddr")?,
            sk_dport: sock("__sk_common.skc_dport")?,
            sk_num: sock("__sk_common.skc_num")?,
            sk_v6_daddr: sock("__sk_common.skc_v6_daddr")?,
            sk_v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr")?,
            tp_write_seq: tcp("write_seq")?,
            tp_copied_seq: tcp("copied_seq")?,
            tp_rcv_nxt: tcp("rcv_nxt")?,
            tp_snd_nxt: tcp("snd_nxt")?,
            sk_protocol: sock("sk_protocol")?,
            skb_tcp_seq: skb("cb")? + self.offset_of("tcp_skb_cb", "seq")?,
            skb_tcp_end_seq: skb("cb")? + self.offset_of("tcp_skb_cb", "end_seq")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        assert!(Btf::parse(&[0u8; 64]).is_err());
    }

    /// The project's machines have kernel BTF (DESIGN.md §6): the offsets resolve and look like
    /// a real sk_buff/sock.
    #[test]
    fn running_kernel_offsets_resolve() {
        let btf = Btf::from_sys_fs().unwrap();
        let o = btf.kernel_offsets().unwrap();
        assert!(o.skb_head > 0 && o.skb_network_header > 0);
        // tcp_sock starts with the sock it extends, so sock fields sit before tcp fields.
        assert!(o.sk_num < o.tp_write_seq);
        assert_eq!(
            o.sk_net, 48,
            "sock_common.skc_net has been at 48 on x86_64 for years"
        );
        // TCP's control block lives in the skb's cb[], seq then end_seq.
        assert_eq!(o.skb_tcp_end_seq, o.skb_tcp_seq + 4);
        assert!(btf.has_tracepoint("sock_send_length"));
        assert!(!btf.has_tracepoint("no_such_tracepoint_here"));
    }
}
