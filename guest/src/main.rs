//! The guest appliance: a Redis-protocol key-value server that runs at
//! CPL3 under the fault-tolerant VMM.
//!
//! Its only contact with the outside is the exchange exit (guest-abi): one
//! `out PORT_EXCHANGE` per event-loop turn hands over the frames sent and
//! returns the frames received, the clock and entropy. Everything it does
//! depends only on BootInfo and those inputs, so a backup replaying the
//! same inputs at the same exits computes the same state. It never executes
//! rdtsc, rdrand, rdseed or cpuid.
#![no_std]
#![no_main]

extern crate alloc;

mod console;
mod device;
mod exchange;
mod heap;
mod mem;
mod rt;
mod server;

use console::Console;
use core::fmt::Write;
use exchange::{Request, SharedArea};
use guest_abi::{BootInfo, Exchange, ABI_VERSION, BOOT_MAGIC, REQ_ENTROPY, WAIT_NONE};
use server::Server;

/// Entered by the VMM at CPL3 with `rdi` = the BootInfo address and
/// `rsp` = STACK_TOP - 8, as if called.
///
/// # Safety
/// Only the VMM calls this, once, with `boot` pointing at a BootInfo.
#[no_mangle]
pub unsafe extern "C" fn _start(boot: *const BootInfo) -> ! {
    // SAFETY: the VMM writes BootInfo at this address before the first
    // instruction and never changes it.
    let boot = unsafe { boot.read_volatile() };
    if boot.magic != BOOT_MAGIC {
        rt::halt(rt::EXIT_BAD_MAGIC);
    }
    if boot.abi_version != ABI_VERSION {
        rt::halt(rt::EXIT_BAD_ABI_VERSION);
    }
    let area = boot.exchange as *mut Exchange;
    if area.is_null() || !area.is_aligned() || boot.prefix_len > 32 {
        rt::halt(rt::EXIT_BAD_BOOT_INFO);
    }
    console::init(area);
    if !heap::init(boot.heap_start, boot.heap_end) {
        let _ = writeln!(
            Console,
            "ft-guest: unusable heap {:#x}..{:#x}",
            boot.heap_start, boot.heap_end
        );
        rt::halt(rt::EXIT_BAD_BOOT_INFO);
    }
    log_boot(&boot);
    // SAFETY: validated above; the ABI gives the area to the guest alone
    // (the console module only touches its console fields).
    let mut shared = unsafe { SharedArea::new(area) };
    run(&boot, &mut shared)
}

/// The event loop. The first exit asks for entropy (smoltcp's seed) and
/// the clock; every exit after that ends one turn.
fn run(boot: &BootInfo, shared: &mut SharedArea) -> ! {
    let mut delivered = shared.exchange(Request {
        tx_count: 0,
        flags: REQ_ENTROPY,
        wait_until_ns: WAIT_NONE,
    });
    let seed = u64::from_le_bytes(shared.entropy()[..8].try_into().expect("8 bytes"));
    let mut server = Server::new(boot, seed, delivered.now_ns, &mut shared.device(0));
    let _ = writeln!(Console, "ft-guest: serving on port {}", server::PORT);
    loop {
        let mut device = shared.device(delivered.rx_count);
        let wait_until_ns = server.turn(delivered.now_ns, &mut device);
        let tx_count = device.tx_count();
        delivered = shared.exchange(Request {
            tx_count,
            flags: 0,
            wait_until_ns,
        });
    }
}

fn log_boot(boot: &BootInfo) {
    let [m0, m1, m2, m3, m4, m5] = boot.mac;
    let [a, b, c, d] = boot.ipv4;
    let [g0, g1, g2, g3] = boot.gateway;
    let _ = writeln!(
        Console,
        "ft-guest: abi {ABI_VERSION}, mac {m0:02x}:{m1:02x}:{m2:02x}:{m3:02x}:{m4:02x}:{m5:02x}, \
         ip {a}.{b}.{c}.{d}/{}, gateway {g0}.{g1}.{g2}.{g3}, heap {:#x}..{:#x}",
        boot.prefix_len, boot.heap_start, boot.heap_end
    );
}
