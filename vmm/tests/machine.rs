//! The machine on real KVM with tiny hand-assembled guests.

use ft_tests::elf::{tiny_elf, CODE_OFFSET};
use ft_tests::require_root_and_kvm;
use ftlog::GuestConfig;
use vmm::{GuestExit, GuestImage, LoadError, Machine, MachineError};

const CONFIG: GuestConfig = GuestConfig {
    mac: [2, 0, 0, 0, 0, 2],
    ipv4: [198, 18, 0, 2],
    prefix_len: 24,
    gateway: [0; 4],
};

// mov dx, 0x0f01 ; mov eax, 7 ; out dx, eax
const HALT_7: &[u8] = &[0x66, 0xba, 0x01, 0x0f, 0xb8, 0x07, 0, 0, 0, 0xef];

fn boot(code: &[u8]) -> Machine {
    let image = GuestImage::parse(&tiny_elf(code)).expect("valid image");
    Machine::new(&image, &CONFIG).expect("create VM")
}

#[test]
fn guest_starts_at_cpl3_and_halts_with_its_code() {
    require_root_and_kvm();
    // Reads rdi (boot info address) into eax first: proves the entry ABI.
    // mov eax, edi ; mov dx, 0x0f01 ; out dx, eax
    let mut machine = boot(&[0x89, 0xf8, 0x66, 0xba, 0x01, 0x0f, 0xef]);
    assert_eq!(
        machine.run_to_exit().unwrap(),
        GuestExit::Halt(guest_abi::BOOT_INFO_ADDR as u32)
    );
    let mut machine = boot(HALT_7);
    assert_eq!(machine.run_to_exit().unwrap(), GuestExit::Halt(7));
}

#[test]
fn same_guest_gives_same_state_hash() {
    require_root_and_kvm();
    let hashes: Vec<_> = (0..2)
        .map(|_| {
            let mut machine = boot(HALT_7);
            machine.run_to_exit().unwrap();
            machine.state_hash().unwrap()
        })
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    let mut other = boot(&[0x66, 0xba, 0x01, 0x0f, 0xb8, 0x08, 0, 0, 0, 0xef]);
    other.run_to_exit().unwrap();
    assert_ne!(other.state_hash().unwrap(), hashes[0]);
}

#[test]
fn faulting_guest_is_reported_with_its_rip() {
    require_root_and_kvm();
    let mut machine = boot(&[0x90, 0x0f, 0x0b]); // nop ; ud2
    match machine.run_to_exit() {
        Err(MachineError::GuestCrash { rip, reason }) => {
            assert!(reason.contains("triple fault"), "{reason}");
            assert_eq!(rip, 0x10_0000 + CODE_OFFSET + 1, "rip of the ud2");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    // A null dereference faults too: page 0 is unmapped.
    let mut machine = boot(&[0x48, 0x31, 0xc0, 0x8b, 0x00]); // xor rax,rax ; mov eax,[rax]
    assert!(matches!(
        machine.run_to_exit(),
        Err(MachineError::GuestCrash { .. })
    ));
}

#[test]
fn unknown_port_is_a_crash_not_a_position() {
    require_root_and_kvm();
    // mov dx, 0x80 ; out dx, eax
    let mut machine = boot(&[0x66, 0xba, 0x80, 0x00, 0xef]);
    match machine.run_to_exit() {
        Err(MachineError::GuestCrash { reason, .. }) => {
            assert!(reason.contains("port 0x80"), "{reason}")
        }
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn loader_refuses_every_nondeterministic_instruction_with_its_offset() {
    for (bytes, name) in [
        (&[0x0f, 0x31][..], "rdtsc"),
        (&[0x0f, 0x01, 0xf9], "rdtscp"),
        (&[0x0f, 0xc7, 0xf0], "rdrand"),
        (&[0x0f, 0xc7, 0xf8], "rdseed"),
        (&[0x0f, 0xa2], "cpuid"),
    ] {
        let mut code = vec![0x90, 0x90, 0x90];
        code.extend_from_slice(bytes);
        code.extend_from_slice(HALT_7);
        match GuestImage::parse(&tiny_elf(&code)) {
            Err(e @ LoadError::ForbiddenInstruction { .. }) => {
                let LoadError::ForbiddenInstruction {
                    instruction,
                    offset,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(instruction, name);
                assert_eq!(offset, CODE_OFFSET + 3);
            }
            Err(e) => panic!("{name}: wrong error {e}"),
            Ok(_) => panic!("{name}: image accepted"),
        }
    }
    assert!(GuestImage::parse(&tiny_elf(HALT_7)).is_ok());
}

#[test]
fn loader_rejects_bad_images_clearly() {
    assert!(matches!(
        GuestImage::parse(b"not an elf"),
        Err(LoadError::BadElf(_))
    ));
    let mut wrong_arch = tiny_elf(HALT_7);
    wrong_arch[18] = 0xb7; // aarch64
    assert!(matches!(
        GuestImage::parse(&wrong_arch),
        Err(LoadError::BadElf(_))
    ));
    let truncated = &tiny_elf(HALT_7)[..100];
    assert!(GuestImage::parse(truncated).is_err());
}

/// A log kept in memory: the recorder's sink and the replayer's source.
#[derive(Default)]
struct MemoryLog(std::collections::VecDeque<ftlog::Entry>);

impl vmm::LogSink for MemoryLog {
    fn append(&mut self, entry: ftlog::Entry) -> std::io::Result<()> {
        self.0.push_back(entry);
        Ok(())
    }
}

impl vmm::EntrySource for MemoryLog {
    fn next_entry(&mut self) -> Result<Option<ftlog::Entry>, ftlog::LogError> {
        Ok(self.0.pop_front())
    }
}

struct NoOutput;

impl vmm::OutputSink for NoOutput {
    fn output(&mut self, _: Vec<u8>, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_crash_ends_the_log_with_a_crash_halt_that_the_replay_reproduces() {
    require_root_and_kvm();
    let code = &[0x90, 0x0f, 0x0b]; // nop ; ud2
    let (_inputs, queue) = std::sync::mpsc::sync_channel(1);
    let recorder = vmm::Recorder::new(boot(code), queue, vmm::GuestClock::starting_at(0));
    let mut log = MemoryLog::default();
    let crash = recorder.run(&mut log, &mut NoOutput).unwrap_err();
    assert!(crash.to_string().contains("triple fault"), "{crash}");
    let Some(ftlog::Entry {
        payload: ftlog::Payload::Halt {
            guest_exit_code, ..
        },
        ..
    }) = log.0.back()
    else {
        panic!("the log does not end with a Halt: {:?}", log.0);
    };
    assert_eq!(*guest_exit_code, Some(vmm::CRASH_EXIT_CODE));

    // The backup crashes at the same exit with the same state: a clean end.
    let mut replayed = MemoryLog(log.0.clone());
    match vmm::Replayer::new(boot(code)).run(&mut replayed, &mut |_| {}) {
        Ok(vmm::ReplayEnd::Halted(summary)) => {
            assert_eq!(summary.guest_exit_code, Some(vmm::CRASH_EXIT_CODE))
        }
        Ok(vmm::ReplayEnd::LogEnded(_)) => panic!("the replay ended without its Halt"),
        Err(e) => panic!("the replay failed: {e}"),
    }
    // Without the Halt, the replay's crash is an error, never a handover.
    assert!(matches!(
        vmm::Replayer::new(boot(code)).run(&mut MemoryLog::default(), &mut |_| {}),
        Err(vmm::ReplayError::Machine(MachineError::GuestCrash { .. }))
    ));
}
