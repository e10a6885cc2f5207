//! The deterministic machine and the record/replay engines.
//!
//! - [`machine`]: one KVM VM, one vCPU, booted at CPL3; runs to the next
//!   guest-initiated exit.
//! - [`loader`]: the guest ELF, checked for instructions that cannot be replayed.
//! - [`exchange`]: reads the guest's request and writes the delivered inputs.
//! - [`record`]: the primary's engine: chooses inputs at exits and logs them.
//! - [`replay`]: applies a log at the same positions and checks outputs.
//! - [`handover`]: a replaying VM whose log ended, taken over by a recorder.
//! - [`precopy`]: the rounds that move RAM to a joining backup.
//! - [`snapshot`]: a running VM's state, moved to a joining backup while
//!   the guest runs (the dirty log, the vCPU state, the state digest).

pub mod exchange;
pub mod handover;
pub mod loader;
pub mod machine;
pub mod precopy;
pub mod record;
pub mod replay;
pub mod snapshot;

pub use handover::Handover;
pub use loader::{GuestImage, LoadError};
pub use machine::{GuestExit, Machine, MachineError};
pub use record::{
    GuestClock, Input, LogSink, OutputSink, Pause, PausedWork, Recorder, RunSummary,
    CRASH_EXIT_CODE,
};
pub use replay::{Divergence, EntrySource, ReplayEnd, ReplayError, ReplaySummary, Replayer};
pub use snapshot::{ResumePoint, VcpuState};
