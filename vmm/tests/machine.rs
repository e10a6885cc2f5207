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
fn page_digests_refreshed_as_pages_are_written_equal_a_full_rehash() {
    require_root_and_kvm();
    let machine = boot(HALT_7);
    let mut digests = machine.page_digests().unwrap();
    let page = vmm::snapshot::PAGE_SIZE;
    let data: Vec<u8> = (0..3 * page).map(|i| (i % 251) as u8).collect();
    machine.write_pages(0x2000, &data).unwrap();
    machine.write_pages(0x10, &vec![0xab; page]).unwrap();
    machine
        .refresh_page_digests(&mut digests, 0x2000, 3)
        .unwrap();
    // Compared without printing 32768 digests on failure.
    let current = machine.page_digests().unwrap();
    assert!(digests != current, "page 0x10 is stale");
    machine.refresh_page_digests(&mut digests, 0x10, 1).unwrap();
    assert!(digests == current);
    let pages = digests.len() as u64;
    for (first, count) in [(pages - 1, 2), (u64::MAX, 2)] {
        let err = machine
            .refresh_page_digests(&mut digests, first, count)
            .unwrap_err();
        assert!(err.to_string().contains("not in guest RAM"), "{err}");
    }
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

/// Guest RAM as a joining backup receives it.
struct RamImage(Vec<u8>);

impl vmm::precopy::PageSink for RamImage {
    fn pages(&mut self, first_pfn: u64, data: &[u8]) -> std::io::Result<()> {
        let at = first_pfn as usize * vmm::snapshot::PAGE_SIZE;
        self.0[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn zeros(&mut self, first_pfn: u64, count: u64) -> std::io::Result<()> {
        let at = first_pfn as usize * vmm::snapshot::PAGE_SIZE;
        self.0[at..at + count as usize * vmm::snapshot::PAGE_SIZE].fill(0);
        Ok(())
    }
}

#[test]
fn a_vm_moved_by_precopy_while_it_runs_replays_on_to_the_same_state() {
    require_root_and_kvm();
    use vmm::precopy::{Convergence, Final, PreCopy};
    use vmm::snapshot::{StateDigest, VcpuState};
    // Writes one page of a 16 MiB region per exit, round and round:
    // movabs rbx, 0x2000000
    // l: inc qword [rbx] ; add rbx, 0x1000 ; and rbx, 0xffffff
    //    or rbx, 0x2000000 ; mov dx, 0x0f00 ; out dx, eax ; jmp l
    let code: &[u8] = &[
        0x48, 0xbb, 0, 0, 0, 2, 0, 0, 0, 0, //
        0x48, 0xff, 0x03, //
        0x48, 0x81, 0xc3, 0, 0x10, 0, 0, //
        0x48, 0x81, 0xe3, 0xff, 0xff, 0xff, 0, //
        0x48, 0x81, 0xcb, 0, 0, 0, 2, //
        0x66, 0xba, 0x00, 0x0f, //
        0xef, //
        0xeb, 0xe1,
    ];
    let image_hash = [7u8; 32];
    let config_hash = [8u8; 32];
    let primary = boot(code);
    let dirty_log = primary.dirty_log();
    let (inputs, queue) = std::sync::mpsc::sync_channel(16);
    let pause = std::sync::Arc::new(vmm::Pause::default());
    let recorder = vmm::Recorder::new(primary, queue, vmm::GuestClock::starting_at(0))
        .with_pause(pause.clone());
    let running = std::thread::spawn(move || {
        let mut log = MemoryLog::default();
        let summary = recorder.run(&mut log, &mut NoOutput).expect("record");
        (summary, log)
    });
    std::thread::sleep(std::time::Duration::from_millis(50));

    let mut precopy = PreCopy::start(dirty_log).expect("start the dirty log");
    let mut ram = RamImage(vec![0xaa; guest_abi::RAM_SIZE as usize]);
    let policy = Convergence::default();
    while !policy.done(precopy.rounds()) {
        precopy.round(&mut ram).expect("pre-copy round");
    }
    let rounds = precopy.rounds().len();
    assert!(rounds >= 2, "the busy guest needs more than one round");
    assert!(
        precopy.rounds()[1].pages > 0,
        "the guest's writes are logged"
    );
    let (done, finished) = std::sync::mpsc::channel::<(Final, RamImage)>();
    pause.request(Box::new(move |machine, point| {
        let last = precopy
            .finish(machine, point, (&image_hash, &config_hash), &mut ram)
            .expect("final round");
        done.send((last, ram)).expect("the test waits");
    }));
    let (last, ram) = finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the recorder ran the paused work");
    std::thread::sleep(std::time::Duration::from_millis(50));
    inputs.send(vmm::Input::Stop).unwrap();
    let (summary, log) = running.join().unwrap();
    assert!(
        summary.exits > last.point.next_exit + 10,
        "the guest ran on"
    );

    // The backup: a fresh VM of the same image, given the moved state.
    let backup = boot(code);
    let check = |ram: &[u8]| {
        backup.write_pages(0, ram).unwrap();
        StateDigest {
            image_hash: &image_hash,
            config_hash: &config_hash,
            point: last.point,
            vcpu: &last.vcpu,
            pages: &backup.page_digests().unwrap(),
        }
        .hash()
    };
    let mut flipped = ram.0.clone();
    flipped[0x200_0000 + 77] ^= 1;
    assert_ne!(check(&flipped), last.state_digest, "one flipped byte shows");
    assert_eq!(check(&ram.0), last.state_digest, "the moved state verifies");
    backup
        .restore_vcpu(&VcpuState::decode(&last.vcpu).unwrap())
        .unwrap();
    let mut rest = MemoryLog(
        log.0
            .into_iter()
            .filter(|entry| entry.seq >= last.point.next_seq)
            .collect(),
    );
    match vmm::Replayer::resume_from(backup, last.point).run(&mut rest, &mut |_| {}) {
        Ok(vmm::ReplayEnd::Halted(replayed)) => {
            assert_eq!(replayed.state_hash, summary.state_hash);
            assert_eq!(replayed.exits, summary.exits);
        }
        Ok(vmm::ReplayEnd::LogEnded(_)) => panic!("the replay ended without its Halt"),
        Err(e) => panic!("the replay from the snapshot failed: {e}"),
    }
}
