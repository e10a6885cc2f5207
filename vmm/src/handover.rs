//! A replaying VM becoming the recording one: what a backup that goes live
//! carries from the end of its log into recording (see `Recorder::resume`).

use crate::exchange::Request;
use crate::machine::Machine;
use ftlog::{Payload, Position};

/// The state at the exit where the log ended.
pub struct Handover {
    pub(crate) machine: Machine,
    /// The exit at which the log ended.
    pub(crate) position: Position,
    /// The guest's request there, without the outputs the log already had.
    pub(crate) request: Request,
    /// Inputs of that exit that arrived before the log ended.
    pub(crate) inputs: Vec<Payload>,
    /// The last clock value the guest was given.
    pub(crate) clock_ns: u64,
    /// The sequence number a continuing log starts from.
    pub(crate) next_seq: u64,
}

impl Handover {
    pub fn position(&self) -> Position {
        self.position
    }

    pub fn clock_ns(&self) -> u64 {
        self.clock_ns
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The dirty log of the VM taken over, for a later state transfer.
    pub fn dirty_log(&self) -> crate::snapshot::DirtyLog {
        self.machine.dirty_log()
    }
}
