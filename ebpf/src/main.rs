//! The datapath of one FT host's NIC.
//!
//! - `ft_xdp` (XDP, ingress): frames for the service (its MAC, or a broadcast
//!   ARP asking for its IP) go to the AF_XDP socket of their rx queue when
//!   this host is primary and are dropped otherwise; all other frames pass
//!   to the host stack untouched.
//! - `ft_fence` (tc egress): frames whose source is the service MAC leave
//!   only while this host is primary, so a deposed primary stays silent.
//!
//! Both read the role map on every frame: the agent flips it and the next
//! frame sees the new role. Counters are per CPU, summed by userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray, XskMap},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{info, warn};
use ebpf_common::{Counter, ServiceConfig, COUNTER_SLOTS, ETH_HLEN, MAX_QUEUES, ROLE_PRIMARY};

#[map(name = "FT_CONFIG")]
static CONFIG: Array<ServiceConfig> = Array::with_max_entries(1, 0);

#[map(name = "FT_ROLE")]
static ROLE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "FT_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "FT_XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// Offset of the ARP target protocol address in an Ethernet frame.
const ARP_TPA: usize = ETH_HLEN + 24;

/// Adds one to `counter` on this CPU and returns the new per-CPU value.
#[inline(always)]
fn count(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, which
        // only this program invocation touches while it runs.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// Logging is rate-safe: a kind of event is logged at its 1st, 2nd, 4th,
/// 8th, ... occurrence on a CPU, so a flood costs a handful of lines.
#[inline(always)]
fn worth_logging(n: u64) -> bool {
    n.is_power_of_two()
}

#[inline(always)]
fn is_primary() -> bool {
    matches!(ROLE.get(0), Some(&ROLE_PRIMARY))
}

/// Reads `N` bytes at `offset`, or `None` past the end of the frame. The
/// explicit comparison against `data_end` is what the verifier checks.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data() + offset;
    if start + N > ctx.data_end() {
        return None;
    }
    // SAFETY: [start, start + N) lies inside the packet, checked just above.
    Some(unsafe { *(start as *const [u8; N]) })
}

#[xdp]
pub fn ft_xdp(ctx: XdpContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let len = ctx.data_end() - ctx.data();
    let Some(dst) = bytes::<6>(&ctx, 0) else {
        return runt(&ctx, len);
    };
    let Some(ethertype) = bytes::<2>(&ctx, 12) else {
        return runt(&ctx, len);
    };
    let for_service = dst == config.mac
        || (dst == BROADCAST
            && ethertype == ETHERTYPE_ARP
            && bytes::<4>(&ctx, ARP_TPA) == Some(config.ip));
    if !for_service {
        count(Counter::Passed);
        return xdp_action::XDP_PASS;
    }
    if len > config.max_frame as usize {
        if worth_logging(count(Counter::Oversize)) {
            warn!(&ctx, "ft_xdp: service frame of {} bytes > UMEM frame", len);
        }
        return xdp_action::XDP_DROP;
    }
    if !is_primary() {
        count(Counter::DroppedNotPrimary);
        return xdp_action::XDP_DROP;
    }
    let queue = ctx.rx_queue_index();
    match XSKS.redirect(queue, 0) {
        Ok(action) => {
            count(Counter::Redirected);
            action
        }
        Err(_) => {
            if worth_logging(count(Counter::NoSocket)) {
                warn!(&ctx, "ft_xdp: no AF_XDP socket on rx queue {}", queue);
            }
            xdp_action::XDP_DROP
        }
    }
}

/// A frame shorter than an Ethernet header is nobody's: dropped, counted.
#[inline(always)]
fn runt(ctx: &XdpContext, len: usize) -> u32 {
    if worth_logging(count(Counter::Runt)) {
        info!(ctx, "ft_xdp: dropped runt frame of {} bytes", len);
    }
    xdp_action::XDP_DROP
}

#[classifier]
pub fn ft_fence(ctx: TcContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    // A frame too short to hold a source MAC cannot claim the service's.
    let Ok(src) = ctx.load::<[u8; 6]>(6) else {
        return TC_ACT_UNSPEC;
    };
    if src != config.mac || is_primary() {
        // Not ours to judge: the next program (or the default) decides.
        return TC_ACT_UNSPEC;
    }
    if worth_logging(count(Counter::Fenced)) {
        info!(
            &ctx,
            "ft_fence: dropped frame from the service MAC (not primary)"
        );
    }
    TC_ACT_SHOT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// The kernel requires a license; none of the helpers used is GPL-only.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
