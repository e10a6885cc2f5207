//! One KVM VM with one vCPU, booted straight into 64-bit mode at CPL3.
//!
//! On this machine kind KVM runs CPL0 code through its slow instruction
//! emulator but CPL3 code natively, so the VMM builds the page tables and
//! GDT itself and the guest never runs in kernel mode. No IDT is installed:
//! any guest fault becomes a triple fault (`KVM_EXIT_SHUTDOWN`), which is
//! reported as a crash with the RIP.

use crate::loader::GuestImage;
use crate::snapshot::{page_digest, DirtyLog, PageDigest, VcpuState, PAGES, PAGE_SIZE, SAVED_MSRS};
use ftlog::GuestConfig;
use guest_abi as abi;
use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region, Msrs,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("guest crashed at rip {rip:#x}: {reason}")]
    GuestCrash { rip: u64, reason: String },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError::Kvm { what, source }
}

/// A guest-initiated exit: the only places where inputs may be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest wrote `PORT_EXCHANGE`: its request is in the exchange area.
    Exchange,
    /// The guest wrote `PORT_HALT` with this exit code.
    Halt(u32),
}

// Page table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
const PAGE_4K: u64 = 0x1000;
const PAGE_2M: u64 = 0x20_0000;

// GDT (values from the measured boot recipe in shared/README.md).
const GDT: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff, // kernel code64
    0x00cf_9300_0000_ffff, // kernel data
    0x00cf_f300_0000_ffff, // user data
    0x00af_fb00_0000_ffff, // user code64
];
const USER_DATA_SELECTOR: u16 = (3 << 3) | 3;
const USER_CODE_SELECTOR: u16 = (4 << 3) | 3;

// 64-bit TSS with an I/O permission bitmap that allows every port. IOPL=3
// alone is not enough here: PVM clears IOPL and checks the bitmap, so
// without a TSS every `out` is a #GP (measured).
const TSS_ADDR: u64 = 0xa000;
const TSS_IOMAP_OFFSET: u64 = 104;
const TSS_LIMIT: u32 = (TSS_IOMAP_OFFSET + 8192) as u32; // + the 0xff terminator byte
const TSS_SELECTOR: u16 = 5 << 3;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_RESERVED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;

pub struct Machine {
    // Field order matters for drop: the vCPU and VM go before the memory
    // they map, and everything before the /dev/kvm handle.
    vcpu: VcpuFd,
    vm: Arc<VmFd>,
    region: kvm_userspace_memory_region,
    memory: GuestMemoryMmap,
    _kvm: Kvm,
}

impl Machine {
    /// Creates the VM, loads the image, and leaves the vCPU at the guest's
    /// entry point with `rdi` pointing at its [`abi::BootInfo`].
    pub fn new(image: &GuestImage, config: &GuestConfig) -> Result<Machine, MachineError> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), abi::RAM_SIZE as usize)])
                .map_err(|e| MachineError::Memory(e.to_string()))?;
        let host_addr = memory
            .get_host_address(GuestAddress(0))
            .map_err(|e| MachineError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: abi::RAM_SIZE,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live anonymous mapping of exactly
        // RAM_SIZE bytes owned by `memory`, which outlives the VM (field
        // order in `Machine`).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("set memory region"))?;

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create vCPU"))?;
        // Long mode needs the LM bit in the guest CPUID; the guest itself
        // never executes CPUID (the loader refuses images that do).
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;

        let machine = Machine {
            vcpu,
            vm: Arc::new(vm),
            region,
            memory,
            _kvm: kvm,
        };
        machine.write_page_tables()?;
        machine.write_gdt()?;
        machine.write_boot_info(config)?;
        image.load_into(&machine.memory)?;
        machine.set_boot_registers(image.entry())?;
        Ok(machine)
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// A handle on the guest's dirty-page log, for a transfer thread that
    /// reads RAM while the vCPU runs.
    pub fn dirty_log(&self) -> DirtyLog {
        DirtyLog::new(self.vm.clone(), self.region, self.memory.clone())
    }

    /// The vCPU's state, for a snapshot (the vCPU is stopped: `&self`
    /// between two `run_to_exit` calls).
    pub fn vcpu_state(&self) -> Result<VcpuState, MachineError> {
        let entries: Vec<kvm_msr_entry> = SAVED_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| MachineError::Memory(format!("MSR list: {e:?}")))?;
        let read = self.vcpu.get_msrs(&mut msrs).map_err(kvm_err("get MSRs"))?;
        Ok(VcpuState {
            regs: self.vcpu.get_regs().map_err(kvm_err("get regs"))?,
            sregs: self.vcpu.get_sregs().map_err(kvm_err("get sregs"))?,
            xsave: Box::new(self.vcpu.get_xsave().map_err(kvm_err("get xsave"))?),
            xcrs: self.vcpu.get_xcrs().map_err(kvm_err("get XCRs"))?,
            msrs: msrs.as_slice()[..read].to_vec(),
        })
    }

    /// Puts the vCPU into `state` (a snapshot taken by [`Machine::vcpu_state`]
    /// on a machine of the same image and configuration).
    pub fn restore_vcpu(&self, state: &VcpuState) -> Result<(), MachineError> {
        self.vcpu
            .set_sregs(&state.sregs)
            .map_err(kvm_err("set sregs"))?;
        self.vcpu
            .set_regs(&state.regs)
            .map_err(kvm_err("set regs"))?;
        self.vcpu
            .set_xcrs(&state.xcrs)
            .map_err(kvm_err("set XCRs"))?;
        // SAFETY: `xsave` is a whole `kvm_xsave` (4 KiB) read from the same
        // kind of vCPU with `get_xsave`, so the kernel reads no further than
        // the struct, and it describes only features this CPUID enables.
        unsafe { self.vcpu.set_xsave(&state.xsave) }.map_err(kvm_err("set xsave"))?;
        let msrs = Msrs::from_entries(&state.msrs)
            .map_err(|e| MachineError::Memory(format!("MSR list: {e:?}")))?;
        let written = self.vcpu.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
        if written != state.msrs.len() {
            let index = state.msrs.get(written).map_or(0, |m| m.index);
            return Err(MachineError::Memory(format!(
                "KVM refused MSR {index:#x} of the snapshot"
            )));
        }
        Ok(())
    }

    /// Writes whole pages from `first_pfn` on (a snapshot's RAM).
    pub fn write_pages(&self, first_pfn: u64, data: &[u8]) -> Result<(), MachineError> {
        let pages = (data.len() / PAGE_SIZE) as u64;
        if !data.len().is_multiple_of(PAGE_SIZE)
            || first_pfn.checked_add(pages).is_none_or(|end| end > PAGES)
        {
            return Err(MachineError::Memory(format!(
                "{} bytes at page {first_pfn:#x} are not whole pages of guest RAM",
                data.len()
            )));
        }
        self.write(first_pfn * PAGE_SIZE as u64, data)
    }

    /// The digest of every page of RAM, in order.
    pub fn page_digests(&self) -> Result<Vec<PageDigest>, MachineError> {
        Ok(self.ram()?.chunks(PAGE_SIZE).map(page_digest).collect())
    }

    /// Brings `digests` (from [`Machine::page_digests`]) up to date for
    /// the `count` pages from `first_pfn` on, from what RAM holds now: a
    /// joining backup keeps them current as pages arrive, so its final
    /// check does not hash all of RAM while the primary's output waits.
    pub fn refresh_page_digests(
        &self,
        digests: &mut [PageDigest],
        first_pfn: u64,
        count: u64,
    ) -> Result<(), MachineError> {
        let range = first_pfn
            .checked_add(count)
            .filter(|&end| end <= PAGES && digests.len() as u64 == PAGES)
            .map(|end| first_pfn as usize..end as usize)
            .ok_or_else(|| {
                MachineError::Memory(format!(
                    "{count} pages at page {first_pfn:#x} are not in guest RAM"
                ))
            })?;
        let ram = &self.ram()?[range.start * PAGE_SIZE..range.end * PAGE_SIZE];
        for (digest, page) in digests[range].iter_mut().zip(ram.chunks(PAGE_SIZE)) {
            *digest = page_digest(page);
        }
        Ok(())
    }

    fn ram(&self) -> Result<&[u8], MachineError> {
        let host = self
            .memory
            .get_host_address(GuestAddress(0))
            .map_err(|e| MachineError::Memory(e.to_string()))?;
        // SAFETY: `host` is the start of the single RAM_SIZE mapping owned by
        // `self.memory`; the vCPU is stopped at an exit (we hold `&self`
        // between `run_to_exit` calls), so the guest does not write it while
        // the slice lives.
        Ok(unsafe { std::slice::from_raw_parts(host as *const u8, abi::RAM_SIZE as usize) })
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), MachineError> {
        self.memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| MachineError::Memory(format!("write at {addr:#x}: {e}")))
    }

    /// Identity map of 0..1 GiB: 4 KiB pages for the first 2 MiB with page 0
    /// left unmapped (a null dereference faults instead of reading zeros),
    /// 2 MiB pages above. Every entry is user-accessible: the guest is CPL3.
    fn write_page_tables(&self) -> Result<(), MachineError> {
        let pml4 = abi::PAGE_TABLES_ADDR;
        let pdpt = pml4 + PAGE_4K;
        let pd = pdpt + PAGE_4K;
        let pt = pd + PAGE_4K;
        let flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
        self.write(pml4, &(pdpt | flags).to_le_bytes())?;
        self.write(pdpt, &(pd | flags).to_le_bytes())?;
        let mut table = Vec::with_capacity(512 * 8);
        table.extend_from_slice(&(pt | flags).to_le_bytes());
        for i in 1..512u64 {
            table.extend_from_slice(&((i * PAGE_2M) | flags | PTE_HUGE).to_le_bytes());
        }
        self.write(pd, &table)?;
        table.clear();
        table.extend_from_slice(&0u64.to_le_bytes());
        for i in 1..512u64 {
            table.extend_from_slice(&((i * PAGE_4K) | flags).to_le_bytes());
        }
        self.write(pt, &table)
    }

    fn write_gdt(&self) -> Result<(), MachineError> {
        let mut bytes: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
        let limit = u64::from(TSS_LIMIT);
        let tss_low = (limit & 0xffff)
            | ((TSS_ADDR & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((TSS_ADDR >> 24) & 0xff) << 56);
        bytes.extend_from_slice(&tss_low.to_le_bytes());
        bytes.extend_from_slice(&(TSS_ADDR >> 32).to_le_bytes());
        self.write(abi::GDT_ADDR, &bytes)?;
        let mut tss = vec![0u8; (TSS_IOMAP_OFFSET + 8192 + 1) as usize];
        tss[102..104].copy_from_slice(&(TSS_IOMAP_OFFSET as u16).to_le_bytes());
        *tss.last_mut().expect("not empty") = 0xff;
        self.write(TSS_ADDR, &tss)
    }

    fn write_boot_info(&self, config: &GuestConfig) -> Result<(), MachineError> {
        let info = abi::BootInfo {
            magic: abi::BOOT_MAGIC,
            abi_version: abi::ABI_VERSION,
            prefix_len: u32::from(config.prefix_len),
            mac: config.mac,
            _pad0: [0; 2],
            ipv4: config.ipv4,
            gateway: config.gateway,
            heap_start: abi::HEAP_START,
            heap_end: abi::HEAP_END,
            exchange: abi::EXCHANGE_ADDR,
        };
        // SAFETY: BootInfo is repr(C) plain data without padding holes
        // (explicit pad fields), so viewing it as bytes reads initialised memory.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&info as *const abi::BootInfo).cast::<u8>(),
                std::mem::size_of::<abi::BootInfo>(),
            )
        };
        self.write(abi::BOOT_INFO_ADDR, bytes)
    }

    fn set_boot_registers(&self, entry: u64) -> Result<(), MachineError> {
        let mut sregs: kvm_sregs = self.vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: USER_CODE_SELECTOR,
            type_: 11,
            present: 1,
            dpl: 3,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: USER_DATA_SELECTOR,
            type_: 3,
            db: 1,
            l: 0,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment {
            base: TSS_ADDR,
            limit: TSS_LIMIT,
            selector: TSS_SELECTOR,
            type_: 11,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            ..Default::default()
        };
        sregs.gdt.base = abi::GDT_ADDR;
        sregs.gdt.limit = (GDT.len() * 8 + 16 - 1) as u16;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.cr3 = abi::PAGE_TABLES_ADDR;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
        self.vcpu.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;

        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.vcpu.set_fpu(&fpu).map_err(kvm_err("set FPU"))?;

        let regs = kvm_regs {
            rip: entry,
            rsp: abi::STACK_TOP - 8,
            rdi: abi::BOOT_INFO_ADDR,
            rflags: RFLAGS_RESERVED | RFLAGS_IOPL3,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(kvm_err("set regs"))
    }

    /// Runs the vCPU until the next guest-initiated exit. Asynchronous exits
    /// (a signal interrupting `KVM_RUN`) are not positions: the vCPU is simply
    /// resumed, and nothing is ever delivered there.
    pub fn run_to_exit(&mut self) -> Result<GuestExit, MachineError> {
        loop {
            let exit = match self.vcpu.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(source) => {
                    return Err(MachineError::Kvm {
                        what: "run vCPU",
                        source,
                    })
                }
            };
            let crash = match exit {
                VcpuExit::IoOut(abi::PORT_EXCHANGE, _) => return Ok(GuestExit::Exchange),
                VcpuExit::IoOut(abi::PORT_HALT, data) => {
                    let mut code = [0u8; 4];
                    let n = data.len().min(4);
                    code[..n].copy_from_slice(&data[..n]);
                    return Ok(GuestExit::Halt(u32::from_le_bytes(code)));
                }
                VcpuExit::IoOut(port, _) => format!("write to unknown port {port:#x}"),
                VcpuExit::IoIn(port, _) => format!("read from unknown port {port:#x}"),
                VcpuExit::MmioRead(addr, _) => format!("read of unmapped address {addr:#x}"),
                VcpuExit::MmioWrite(addr, _) => format!("write to unmapped address {addr:#x}"),
                VcpuExit::Shutdown => "triple fault (an exception with no IDT)".to_string(),
                VcpuExit::InternalError => {
                    "KVM internal error (an instruction KVM cannot emulate)".to_string()
                }
                other => format!("unexpected exit {other:?}"),
            };
            let rip = self.rip().unwrap_or(0);
            return Err(MachineError::GuestCrash { rip, reason: crash });
        }
    }

    pub fn rip(&self) -> Result<u64, MachineError> {
        Ok(self.vcpu.get_regs().map_err(kvm_err("get regs"))?.rip)
    }

    /// BLAKE3 over all of guest RAM and the architectural vCPU state. Two
    /// runs that received the same inputs at the same exits end with the
    /// same hash.
    pub fn state_hash(&self) -> Result<[u8; 32], MachineError> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.ram()?);

        let r = self.vcpu.get_regs().map_err(kvm_err("get regs"))?;
        for v in [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
        ] {
            hasher.update(&v.to_le_bytes());
        }
        let s = self.vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
        for v in [s.cr0, s.cr3, s.cr4, s.efer, s.fs.base, s.gs.base] {
            hasher.update(&v.to_le_bytes());
        }
        for seg in [s.cs, s.ds, s.es, s.fs, s.gs, s.ss] {
            hasher.update(&seg.selector.to_le_bytes());
        }
        let f = self.vcpu.get_fpu().map_err(kvm_err("get FPU"))?;
        hasher.update(&f.fcw.to_le_bytes());
        hasher.update(&f.mxcsr.to_le_bytes());
        for x in f.xmm.iter().chain(f.fpr.iter()) {
            hasher.update(x);
        }
        Ok(*hasher.finalize().as_bytes())
    }
}
