//! Moving a running VM to another host (a backup joining a primary that
//! already runs): the vCPU's state as bytes, the dirty-page log that lets
//! RAM move while the guest keeps running (pre-copy), and the digest both
//! ends compute of the state that moved.
//!
//! KVM's dirty log tracks only the guest's own writes. The VMM writes guest
//! memory too, but only the exchange area ([`vmm_written_pages`]), which
//! the last round of a transfer therefore always sends.

use crate::machine::MachineError;
use guest_abi as abi;
use kvm_bindings::{
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_xcrs, kvm_xsave,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::VmFd;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{FromBytes, IntoBytes};

pub const PAGE_SIZE: usize = 4096;
/// Pages of guest RAM.
pub const PAGES: u64 = abi::RAM_SIZE / PAGE_SIZE as u64;
/// The length of a page digest.
pub const PAGE_DIGEST_LEN: usize = 16;
pub type PageDigest = [u8; PAGE_DIGEST_LEN];

/// Where a recording VM was stopped for its snapshot: between two exits,
/// every input of the previous exit delivered and logged, about to run to
/// exit `next_exit`. A replay that starts here continues the log at
/// `next_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    pub next_exit: u64,
    pub next_seq: u64,
    /// The last clock value the guest was given.
    pub clock_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the vCPU state is {got} bytes where {want} were expected (another VMM version?)")]
    Length { got: usize, want: usize },
    #[error("the vCPU state has format {0}, this VMM reads format {VCPU_FORMAT}")]
    Format(u8),
    #[error("the vCPU state lists {0} MSRs, more than the {MAX_MSRS} this VMM saves")]
    TooManyMsrs(usize),
}

/// The MSRs a 64-bit CPL3 guest can depend on. The guest cannot read the
/// TSC (the loader refuses `rdtsc`), so it is not among them.
pub(crate) const SAVED_MSRS: [u32; 9] = [
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x277,       // IA32_PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
];
const MAX_MSRS: usize = SAVED_MSRS.len();
const VCPU_FORMAT: u8 = 1;

/// Everything of the vCPU a restored VM needs: registers, system
/// registers, the FPU/SSE/AVX state (xsave), XCR0 and the MSRs.
pub struct VcpuState {
    pub(crate) regs: kvm_regs,
    pub(crate) sregs: kvm_sregs,
    pub(crate) xsave: Box<kvm_xsave>,
    pub(crate) xcrs: kvm_xcrs,
    pub(crate) msrs: Vec<kvm_msr_entry>,
}

const XSAVE_LEN: usize = std::mem::size_of::<kvm_xsave>();
const FIXED_LEN: usize = 1
    + std::mem::size_of::<kvm_regs>()
    + std::mem::size_of::<kvm_sregs>()
    + XSAVE_LEN
    + std::mem::size_of::<kvm_xcrs>()
    + 1;
const MSR_LEN: usize = std::mem::size_of::<kvm_msr_entry>();

impl VcpuState {
    /// `format:u8 regs sregs xsave xcrs msr_count:u8 msr*`, each struct as
    /// KVM lays it out (both ends run the same VMM: the hellos check it).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.msrs.len() * MSR_LEN);
        out.push(VCPU_FORMAT);
        out.extend_from_slice(self.regs.as_bytes());
        out.extend_from_slice(self.sregs.as_bytes());
        out.extend_from_slice(self.xsave.as_bytes());
        out.extend_from_slice(self.xcrs.as_bytes());
        out.push(self.msrs.len() as u8);
        for msr in &self.msrs {
            out.extend_from_slice(msr.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<VcpuState, SnapshotError> {
        if bytes.len() < FIXED_LEN {
            return Err(SnapshotError::Length {
                got: bytes.len(),
                want: FIXED_LEN,
            });
        }
        if bytes[0] != VCPU_FORMAT {
            return Err(SnapshotError::Format(bytes[0]));
        }
        let msr_count = usize::from(bytes[FIXED_LEN - 1]);
        if msr_count > MAX_MSRS {
            return Err(SnapshotError::TooManyMsrs(msr_count));
        }
        let want = FIXED_LEN + msr_count * MSR_LEN;
        if bytes.len() != want {
            return Err(SnapshotError::Length {
                got: bytes.len(),
                want,
            });
        }
        let mut rest = &bytes[1..];
        let regs = take::<kvm_regs>(&mut rest);
        let sregs = take::<kvm_sregs>(&mut rest);
        let mut xsave = Box::new(kvm_xsave::default());
        xsave.as_mut_bytes().copy_from_slice(&rest[..XSAVE_LEN]);
        rest = &rest[XSAVE_LEN..];
        let xcrs = take::<kvm_xcrs>(&mut rest);
        rest = &rest[1..];
        let msrs = (0..msr_count)
            .map(|_| take::<kvm_msr_entry>(&mut rest))
            .collect();
        Ok(VcpuState {
            regs,
            sregs,
            xsave,
            xcrs,
            msrs,
        })
    }
}

/// Reads a `T` off the front of `bytes` (the caller checked the length).
fn take<T: FromBytes>(bytes: &mut &[u8]) -> T {
    let (value, rest) = T::read_from_prefix(bytes).expect("length checked by the caller");
    *bytes = rest;
    value
}

/// The digest of one page, as both ends compute it.
pub fn page_digest(page: &[u8]) -> PageDigest {
    blake3::hash(page).as_bytes()[..PAGE_DIGEST_LEN]
        .try_into()
        .expect("digest is shorter than the hash")
}

/// What identifies a transferred VM state: the image and configuration
/// it runs, where it stopped, its vCPU, and the digest of every page.
pub struct StateDigest<'a> {
    pub image_hash: &'a [u8; 32],
    pub config_hash: &'a [u8; 32],
    pub point: ResumePoint,
    pub vcpu: &'a [u8],
    pub pages: &'a [PageDigest],
}

impl StateDigest<'_> {
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"ftvm-state-1");
        hasher.update(self.image_hash);
        hasher.update(self.config_hash);
        for v in [
            self.point.next_exit,
            self.point.next_seq,
            self.point.clock_ns,
        ] {
            hasher.update(&v.to_le_bytes());
        }
        hasher.update(&(self.vcpu.len() as u64).to_le_bytes());
        hasher.update(self.vcpu);
        for digest in self.pages {
            hasher.update(digest);
        }
        *hasher.finalize().as_bytes()
    }
}

/// The pages only the VMM writes (the exchange area): the dirty log never
/// shows them, so the last round of a transfer always sends them.
pub fn vmm_written_pages() -> std::ops::Range<u64> {
    let first = abi::EXCHANGE_ADDR / PAGE_SIZE as u64;
    first..first + abi::EXCHANGE_AREA_SIZE / PAGE_SIZE as u64
}

/// KVM's log of the pages the guest wrote, for a transfer that reads RAM
/// while the vCPU runs: a page read, then written, shows up in the next
/// [`DirtyLog::take`].
#[derive(Clone)]
pub struct DirtyLog {
    // Field order matters for drop: the VM goes before the memory it maps.
    vm: Arc<VmFd>,
    region: kvm_userspace_memory_region,
    memory: GuestMemoryMmap,
}

impl DirtyLog {
    pub(crate) fn new(
        vm: Arc<VmFd>,
        region: kvm_userspace_memory_region,
        memory: GuestMemoryMmap,
    ) -> Self {
        DirtyLog { vm, region, memory }
    }

    fn set_flags(&self, flags: u32) -> Result<(), MachineError> {
        let region = kvm_userspace_memory_region {
            flags,
            ..self.region
        };
        // SAFETY: the same slot, addresses and size as the region the VM was
        // created with; the mapping is owned by `self.memory`, which this
        // handle keeps alive at least as long as the VM (field order).
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|source| MachineError::Kvm {
            what: "change dirty logging",
            source,
        })
    }

    /// Starts logging the guest's writes (only while a transfer runs: the
    /// log costs the guest large pages).
    pub fn start(&self) -> Result<(), MachineError> {
        self.set_flags(KVM_MEM_LOG_DIRTY_PAGES)
    }

    pub fn stop(&self) -> Result<(), MachineError> {
        self.set_flags(0)
    }

    /// The pages written since the last call (or since `start`), one bit
    /// each, and clears the log.
    pub fn take(&self) -> Result<Vec<u64>, MachineError> {
        self.vm
            .get_dirty_log(self.region.slot, abi::RAM_SIZE as usize)
            .map_err(|source| MachineError::Kvm {
                what: "get the dirty log",
                source,
            })
    }

    /// Copies page `pfn` into `page`, which may race with the running
    /// guest: a page it changes meanwhile is in the next [`DirtyLog::take`].
    pub fn read_page(&self, pfn: u64, page: &mut [u8; PAGE_SIZE]) -> Result<(), MachineError> {
        self.memory
            .read_slice(page, GuestAddress(pfn * PAGE_SIZE as u64))
            .map_err(|e| MachineError::Memory(format!("read page {pfn:#x}: {e}")))
    }
}

/// The page numbers whose bit is set in a dirty bitmap.
pub fn dirty_pages(bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(|(word, &bits)| {
        (0..64u64)
            .filter(move |bit| bits & (1 << bit) != 0)
            .map(move |bit| word as u64 * 64 + bit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let mut state = VcpuState {
            regs: kvm_regs {
                rip: 0x10_1234,
                rsp: 0x7ff_fff8,
                rflags: 0x3002,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cr3: 0x1000,
                ..Default::default()
            },
            xsave: Box::default(),
            xcrs: kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            },
            msrs: vec![kvm_msr_entry {
                index: 0x277,
                data: 0x0007_0406_0007_0406,
                ..Default::default()
            }],
        };
        state.xsave.region[6] = 0x1f80;
        state
    }

    #[test]
    fn vcpu_state_round_trips() {
        let bytes = sample().encode();
        let back = VcpuState::decode(&bytes).unwrap();
        assert_eq!(back.regs, sample().regs);
        assert_eq!(back.sregs, sample().sregs);
        assert_eq!(back.xsave.region, sample().xsave.region);
        assert_eq!(back.xcrs, sample().xcrs);
        assert_eq!(back.msrs, sample().msrs);
        assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn bad_vcpu_state_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for len in [0, 1, FIXED_LEN - 1, bytes.len() - 1] {
            assert!(matches!(
                VcpuState::decode(&bytes[..len]),
                Err(SnapshotError::Length { .. })
            ));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            VcpuState::decode(&longer),
            Err(SnapshotError::Length { .. })
        ));
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(
            VcpuState::decode(&other),
            Err(SnapshotError::Format(9))
        ));
        let mut many = bytes;
        many[FIXED_LEN - 1] = 200;
        assert!(matches!(
            VcpuState::decode(&many),
            Err(SnapshotError::TooManyMsrs(200))
        ));
    }

    #[test]
    fn the_state_digest_covers_every_part() {
        let pages = vec![page_digest(&[0; PAGE_SIZE]); 4];
        let vcpu = sample().encode();
        let point = ResumePoint {
            next_exit: 10,
            next_seq: 20,
            clock_ns: 30,
        };
        let digest = |image: [u8; 32], point, vcpu: &[u8], pages: &[PageDigest]| {
            StateDigest {
                image_hash: &image,
                config_hash: &[2; 32],
                point,
                vcpu,
                pages,
            }
            .hash()
        };
        let base = digest([1; 32], point, &vcpu, &pages);
        assert_eq!(base, digest([1; 32], point, &vcpu, &pages));
        assert_ne!(base, digest([3; 32], point, &vcpu, &pages));
        let later = ResumePoint {
            next_seq: 21,
            ..point
        };
        assert_ne!(base, digest([1; 32], later, &vcpu, &pages));
        let mut flipped = pages.clone();
        flipped[3][0] ^= 1;
        assert_ne!(base, digest([1; 32], point, &vcpu, &flipped));
        assert_ne!(base, digest([1; 32], point, &vcpu[1..], &pages));
    }

    #[test]
    fn dirty_pages_lists_the_set_bits() {
        let bitmap = [0b1010u64, 0, 1 << 63];
        assert_eq!(dirty_pages(&bitmap).collect::<Vec<_>>(), vec![1, 3, 191]);
    }
}
