//! What the VMM takes from the request half of the exchange area, which
//! the guest writes and the VMM must not trust. Input: `pages:u8` (the
//! guest memory mapped from the area's start, in 4 KiB pages; 0 = the
//! whole area), then writes the guest made: `offset:u32 len:u16 bytes`.
//! A request is taken exactly once and is what the memory held; a broken
//! one is a guest crash (or, past mapped memory, a memory error).
#![no_main]

use guest_abi::{self as abi, offsets};
// The bounded allocator.
use ftvm_fuzz as _;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::exchange::take_request;
use vmm::MachineError;

const RIP: u64 = 0x10_1234;
const PAGE: usize = 4096;
/// The end of the request half: the last tx slot.
const REQUEST_END: usize = offsets::TX + abi::FRAME_SLOTS * offsets::SLOT_SIZE;

fn at(field: usize) -> GuestAddress {
    GuestAddress(abi::EXCHANGE_ADDR + field as u64)
}

fn u32_at(mem: &GuestMemoryMmap, field: usize) -> u32 {
    mem.read_obj(at(field)).unwrap()
}

fn bytes_at(mem: &GuestMemoryMmap, field: usize, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    mem.read_slice(&mut bytes, at(field)).unwrap();
    bytes
}

fn slot_len(mem: &GuestMemoryMmap, index: usize) -> Option<usize> {
    mem.read_obj::<u32>(at(offsets::TX + index * offsets::SLOT_SIZE))
        .ok()
        .map(|len| len as usize)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pages, mut writes)) = data.split_first() else {
        return;
    };
    let size = match pages {
        0 => abi::EXCHANGE_AREA_SIZE as usize,
        pages => usize::from(pages) * PAGE,
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(at(0), size)]).unwrap();
    while let Some((header, rest)) = writes.split_first_chunk::<6>() {
        let offset = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize % size;
        let len = usize::from(u16::from_le_bytes([header[4], header[5]])).min(rest.len());
        let (bytes, rest) = rest.split_at(len);
        // Cut at the mapped end: the guest's write would fault there.
        mem.write_slice(&bytes[..len.min(size - offset)], at(offset))
            .unwrap();
        writes = rest;
    }

    // The header fields lie in the first page, which is always mapped.
    let tx_count = u32_at(&mem, offsets::TX_COUNT) as usize;
    let console_len = (u32_at(&mem, offsets::CONSOLE_LEN) as usize).min(abi::CONSOLE_CAPACITY);
    match take_request(&mem, || RIP) {
        Ok(request) => {
            assert_eq!(request.tx_frames.len(), tx_count);
            for (index, frame) in request.tx_frames.iter().enumerate() {
                assert!((1..=abi::FRAME_CAPACITY).contains(&frame.len()));
                let data = offsets::TX + index * offsets::SLOT_SIZE + offsets::SLOT_DATA;
                assert_eq!(*frame, bytes_at(&mem, data, frame.len()));
            }
            assert_eq!(request.console.len(), console_len);
            assert_eq!(
                request.console,
                bytes_at(&mem, offsets::CONSOLE, request.console.len())
            );
            let flags = u32_at(&mem, offsets::FLAGS);
            assert_eq!(request.wants_entropy, flags & abi::REQ_ENTROPY != 0);
            let wait: u64 = mem.read_obj(at(offsets::WAIT_UNTIL_NS)).unwrap();
            assert_eq!(request.wait_until_ns, wait);
            assert_eq!(u32_at(&mem, offsets::TX_COUNT), 0);
            assert_eq!(u32_at(&mem, offsets::CONSOLE_LEN), 0);

            let again = take_request(&mem, || RIP).expect("an empty request");
            assert!(again.tx_frames.is_empty() && again.console.is_empty());
        }
        Err(MachineError::GuestCrash { rip, .. }) => {
            assert_eq!(rip, RIP);
            let bad_slot = (0..tx_count.min(abi::FRAME_SLOTS)).any(|index| {
                slot_len(&mem, index).is_some_and(|len| len == 0 || len > abi::FRAME_CAPACITY)
            });
            assert!(tx_count > abi::FRAME_SLOTS || bad_slot);
        }
        Err(MachineError::Memory(_)) => assert!(size < REQUEST_END),
        Err(other) => panic!("{other}"),
    }
});
