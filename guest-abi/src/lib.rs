//! The contract between the VMM and the guest appliance.
//!
//! The guest runs at CPL3 in an identity-mapped address space and talks to
//! the VMM through exactly one kind of guest-initiated exit per event-loop
//! turn: it fills the request half of [`Exchange`] (tx frames, console bytes,
//! a wake-up deadline), writes `PORT_EXCHANGE`, and when the `out` returns
//! the response half holds the inputs the VMM delivered at that exit (rx
//! frames, the clock, entropy). Exits cost ~20 µs on this machine kind, so
//! everything a turn needs travels in one exchange.
//!
//! Every value the VMM writes into guest memory after boot is an input and is
//! recorded in the log at the position of the exit that delivered it; the
//! guest never reads a clock, counter or random source of its own.
#![no_std]

/// Bumped whenever a layout or meaning below changes.
pub const ABI_VERSION: u32 = 1;

/// Guest physical memory size. Everything below is identity mapped.
pub const RAM_SIZE: u64 = 128 << 20;
/// PML4, then one PDPT, then one page directory mapping 0..1 GiB with 2 MiB pages.
pub const PAGE_TABLES_ADDR: u64 = 0x1000;
pub const GDT_ADDR: u64 = 0x8000;
/// Where the VMM writes [`BootInfo`]; its address is passed in `rdi`.
pub const BOOT_INFO_ADDR: u64 = 0x9000;
/// The guest ELF must be linked inside `IMAGE_BASE..IMAGE_LIMIT`.
pub const IMAGE_BASE: u64 = 0x10_0000;
pub const IMAGE_LIMIT: u64 = 0x100_0000;
/// The shared [`Exchange`] area.
pub const EXCHANGE_ADDR: u64 = 0x100_0000;
pub const EXCHANGE_AREA_SIZE: u64 = 0x10_0000;
/// Heap handed to the guest's allocator: from the end of the exchange area to
/// the bottom of the stack.
pub const HEAP_START: u64 = EXCHANGE_ADDR + EXCHANGE_AREA_SIZE;
pub const STACK_SIZE: u64 = 8 << 20;
pub const STACK_TOP: u64 = RAM_SIZE;
pub const HEAP_END: u64 = STACK_TOP - STACK_SIZE;

/// `out dx, eax` to this port is the one exchange per event-loop turn.
/// The value written is ignored.
pub const PORT_EXCHANGE: u16 = 0x0f00;
/// `out dx, eax` to this port ends the guest: the value is its exit code
/// (0 = clean stop, anything else = the guest panicked; the console holds why).
pub const PORT_HALT: u16 = 0x0f01;

/// Magic value in [`BootInfo::magic`] ("FTGUEST1").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"FTGUEST1");

/// Written by the VMM at [`BOOT_INFO_ADDR`] before the first instruction.
/// It is configuration, identical on primary and backup, not an input.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub magic: u64,
    pub abi_version: u32,
    /// IPv4 prefix length of `ipv4`.
    pub prefix_len: u32,
    pub mac: [u8; 6],
    pub _pad0: [u8; 2],
    pub ipv4: [u8; 4],
    /// Default gateway; all zero = none.
    pub gateway: [u8; 4],
    pub heap_start: u64,
    pub heap_end: u64,
    /// Address of the [`Exchange`] area.
    pub exchange: u64,
}

/// Number of frame slots in each direction of one exchange.
pub const FRAME_SLOTS: usize = 64;
/// Bytes a slot can hold; Ethernet frames without FCS are at most 1514.
pub const FRAME_CAPACITY: usize = 2044;
/// Bytes of console text the guest can hand over in one exchange.
pub const CONSOLE_CAPACITY: usize = 4096;

/// One Ethernet frame (no preamble, no FCS).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FrameSlot {
    pub len: u32,
    pub data: [u8; FRAME_CAPACITY],
}

/// Request flag: fill `entropy` at this exit.
pub const REQ_ENTROPY: u32 = 1 << 0;

/// `wait_until_ns` value meaning "return at once, do not wait".
pub const WAIT_NONE: u64 = 0;
/// `wait_until_ns` value meaning "no deadline: wait for an input".
pub const WAIT_FOREVER: u64 = u64::MAX;

/// The shared area at [`EXCHANGE_ADDR`].
///
/// Request half (guest → VMM), read by the VMM at each `PORT_EXCHANGE` exit:
/// `tx_count` frames in `tx`, `console_len` bytes in `console`, `flags`, and
/// `wait_until_ns`: the VMM keeps the guest paused at this exit until an input
/// is available or the guest clock reaches this value (see `WAIT_*`).
///
/// Response half (VMM → guest), valid when the `out` returns: `rx_count`
/// frames in `rx`, `now_ns` (the guest clock, monotonic, nanoseconds since
/// boot; unchanged if no clock value was delivered at this exit) and
/// `entropy` (only rewritten when `REQ_ENTROPY` was asked for).
/// The VMM resets `tx_count` and `console_len` to 0 after taking them.
#[repr(C)]
pub struct Exchange {
    pub tx_count: u32,
    pub console_len: u32,
    pub flags: u32,
    pub _pad0: u32,
    pub wait_until_ns: u64,

    pub rx_count: u32,
    pub _pad1: u32,
    pub now_ns: u64,
    pub entropy: [u8; 32],

    pub console: [u8; CONSOLE_CAPACITY],
    pub tx: [FrameSlot; FRAME_SLOTS],
    pub rx: [FrameSlot; FRAME_SLOTS],
}

const _: () = assert!(core::mem::size_of::<Exchange>() as u64 <= EXCHANGE_AREA_SIZE);
const _: () = assert!(core::mem::size_of::<FrameSlot>() == 2048);
const _: () = assert!(HEAP_START < HEAP_END);

/// Byte offsets inside [`Exchange`], for the VMM's guest-memory accessors.
pub mod offsets {
    use super::{Exchange, FrameSlot};
    use core::mem::{offset_of, size_of};

    pub const TX_COUNT: usize = offset_of!(Exchange, tx_count);
    pub const CONSOLE_LEN: usize = offset_of!(Exchange, console_len);
    pub const FLAGS: usize = offset_of!(Exchange, flags);
    pub const WAIT_UNTIL_NS: usize = offset_of!(Exchange, wait_until_ns);
    pub const RX_COUNT: usize = offset_of!(Exchange, rx_count);
    pub const NOW_NS: usize = offset_of!(Exchange, now_ns);
    pub const ENTROPY: usize = offset_of!(Exchange, entropy);
    pub const CONSOLE: usize = offset_of!(Exchange, console);
    pub const TX: usize = offset_of!(Exchange, tx);
    pub const RX: usize = offset_of!(Exchange, rx);
    pub const SLOT_SIZE: usize = size_of::<FrameSlot>();
    pub const SLOT_DATA: usize = offset_of!(FrameSlot, data);
}
