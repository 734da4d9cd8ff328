//! The observer's kernel programs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_PIPE, xdp_action},
        macros::{classifier, map, xdp},
        maps::PerCpuArray,
        programs::{TcContext, XdpContext},
    };

    #[map]
    static LP_PKT_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    fn bump(i: u32) {
        if let Some(c) = LP_PKT_COUNT.get_ptr_mut(i) {
            unsafe { *c += 1 };
        }
    }

    #[xdp]
    pub fn lp_xdp_count(_ctx: XdpContext) -> u32 {
        bump(0);
        xdp_action::XDP_PASS
    }

    #[classifier]
    pub fn lp_tc_count(_ctx: TcContext) -> i32 {
        bump(1);
        TC_ACT_PIPE
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
