//! Typed access to the guest's exchange area (see `guest_abi::Exchange`).

use crate::machine::MachineError;
use guest_abi::{self as abi, offsets};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// What the guest handed over at an exchange exit.
#[derive(Debug, Default)]
pub struct Request {
    pub tx_frames: Vec<Vec<u8>>,
    pub console: Vec<u8>,
    pub wants_entropy: bool,
    /// Guest clock value until which the guest may be kept waiting.
    pub wait_until_ns: u64,
}

/// What the VMM delivers at an exchange exit (the inputs at that position).
#[derive(Debug, Default)]
pub struct Delivery<'a> {
    pub rx_frames: Vec<&'a [u8]>,
    pub clock_ns: Option<u64>,
    pub entropy: Option<[u8; 32]>,
}

fn at(field: usize) -> GuestAddress {
    GuestAddress(abi::EXCHANGE_ADDR + field as u64)
}

fn slot(base: usize, index: usize) -> u64 {
    abi::EXCHANGE_ADDR + (base + index * offsets::SLOT_SIZE) as u64
}

fn mem_err(e: vm_memory::GuestMemoryError) -> MachineError {
    MachineError::Memory(format!("exchange area: {e}"))
}

fn read_u32(mem: &GuestMemoryMmap, field: usize) -> Result<u32, MachineError> {
    mem.read_obj::<u32>(at(field)).map_err(mem_err)
}

/// A guest that breaks the ABI has crashed as far as the VMM is concerned.
fn abi_violation(rip: u64, reason: String) -> MachineError {
    MachineError::GuestCrash {
        rip,
        reason: format!("broke the exchange ABI: {reason}"),
    }
}

/// Reads the guest's request and clears its tx and console counts, so a
/// frame is taken exactly once.
pub fn take_request(mem: &GuestMemoryMmap, rip: impl Fn() -> u64) -> Result<Request, MachineError> {
    let tx_count = read_u32(mem, offsets::TX_COUNT)? as usize;
    if tx_count > abi::FRAME_SLOTS {
        return Err(abi_violation(
            rip(),
            format!("tx_count {tx_count} > {}", abi::FRAME_SLOTS),
        ));
    }
    let mut tx_frames = Vec::with_capacity(tx_count);
    for index in 0..tx_count {
        let base = slot(offsets::TX, index);
        let len = mem.read_obj::<u32>(GuestAddress(base)).map_err(mem_err)? as usize;
        if len == 0 || len > abi::FRAME_CAPACITY {
            return Err(abi_violation(
                rip(),
                format!("tx frame {index} has length {len}"),
            ));
        }
        let mut frame = vec![0u8; len];
        mem.read_slice(&mut frame, GuestAddress(base + offsets::SLOT_DATA as u64))
            .map_err(mem_err)?;
        tx_frames.push(frame);
    }
    let console = take_console(mem)?;
    let flags = read_u32(mem, offsets::FLAGS)?;
    let wait_until_ns = mem
        .read_obj::<u64>(at(offsets::WAIT_UNTIL_NS))
        .map_err(mem_err)?;
    mem.write_obj(0u32, at(offsets::TX_COUNT))
        .map_err(mem_err)?;
    Ok(Request {
        tx_frames,
        console,
        wants_entropy: flags & abi::REQ_ENTROPY != 0,
        wait_until_ns,
    })
}

/// Takes the console text the guest wrote since the last exit (also at a
/// halt, where it says why the guest stopped).
pub fn take_console(mem: &GuestMemoryMmap) -> Result<Vec<u8>, MachineError> {
    let len = (read_u32(mem, offsets::CONSOLE_LEN)? as usize).min(abi::CONSOLE_CAPACITY);
    let mut console = vec![0u8; len];
    mem.read_slice(&mut console, at(offsets::CONSOLE))
        .map_err(mem_err)?;
    mem.write_obj(0u32, at(offsets::CONSOLE_LEN))
        .map_err(mem_err)?;
    Ok(console)
}

/// Writes the inputs delivered at this exit. `rx_count` is always written
/// (0 when there are no frames) so the guest never sees stale frames.
pub fn deliver(mem: &GuestMemoryMmap, delivery: &Delivery) -> Result<(), MachineError> {
    assert!(
        delivery.rx_frames.len() <= abi::FRAME_SLOTS,
        "caller bounds rx frames per exit"
    );
    for (index, frame) in delivery.rx_frames.iter().enumerate() {
        assert!(
            frame.len() <= abi::FRAME_CAPACITY,
            "caller bounds frame length"
        );
        let base = slot(offsets::RX, index);
        mem.write_obj(frame.len() as u32, GuestAddress(base))
            .map_err(mem_err)?;
        mem.write_slice(frame, GuestAddress(base + offsets::SLOT_DATA as u64))
            .map_err(mem_err)?;
    }
    mem.write_obj(delivery.rx_frames.len() as u32, at(offsets::RX_COUNT))
        .map_err(mem_err)?;
    if let Some(now) = delivery.clock_ns {
        mem.write_obj(now, at(offsets::NOW_NS)).map_err(mem_err)?;
    }
    if let Some(entropy) = delivery.entropy {
        mem.write_slice(&entropy, at(offsets::ENTROPY))
            .map_err(mem_err)?;
    }
    Ok(())
}
