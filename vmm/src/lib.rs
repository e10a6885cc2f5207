//! The deterministic machine and the record/replay engines.
//!
//! - [`machine`]: one KVM VM, one vCPU, booted at CPL3; runs to the next
//!   guest-initiated exit.
//! - [`loader`]: the guest ELF, checked for instructions that cannot be replayed.
//! - [`exchange`]: reads the guest's request and writes the delivered inputs.
//! - [`record`]: the primary's engine: chooses inputs at exits and logs them.
//! - [`replay`]: applies a log at the same positions and checks outputs.
//! - [`handover`]: a replaying VM whose log ended, taken over by a recorder.

pub mod exchange;
pub mod handover;
pub mod loader;
pub mod machine;
pub mod record;
pub mod replay;

pub use handover::Handover;
pub use loader::{GuestImage, LoadError};
pub use machine::{GuestExit, Machine, MachineError};
pub use record::{GuestClock, Input, LogSink, OutputSink, Recorder, RunSummary, CRASH_EXIT_CODE};
pub use replay::{Divergence, EntrySource, ReplayEnd, ReplayError, ReplaySummary, Replayer};
