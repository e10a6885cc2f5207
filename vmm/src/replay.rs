//! Applies a log to a fresh VM at exactly the recorded positions.
//!
//! At each exchange exit the replaying VM must produce the outputs the log
//! recorded there (same length and digest, same order), be at the recorded
//! RIP, and then receives exactly the inputs logged for that exit. Anything
//! else is a [`Divergence`] naming the exit. A `Halt` entry ends the replay
//! and its state hash must match.

use crate::exchange::{self, Delivery, Request};
use crate::handover::Handover;
use crate::machine::{GuestExit, Machine, MachineError};
use crate::record::{log_console, output_digest};
use ftlog::{Entry, LogError, Payload, Position};
use guest_abi as abi;

/// Where the entries come from: a file, or the log channel (which blocks
/// until the next entry arrives, and ends when the primary is lost).
pub trait EntrySource {
    fn next_entry(&mut self) -> Result<Option<Entry>, LogError>;

    /// Every entry up to `seq` has been applied (called after each exit).
    fn applied(&mut self, _seq: u64) {}
}

impl EntrySource for ftlog::LogReader {
    fn next_entry(&mut self) -> Result<Option<Entry>, LogError> {
        ftlog::LogReader::next_entry(self)
    }
}

/// The replaying guest is not where the log says it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub exit: u64,
    pub rip: u64,
    /// The log entry involved, if any.
    pub seq: Option<u64>,
    pub detail: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "divergence at exit {} (rip {:#x})", self.exit, self.rip)?;
        if let Some(seq) = self.seq {
            write!(f, ", log entry {seq}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Divergence(Divergence),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("the log ends at exit {exit} without a halt record (the recording was cut short)")]
    LogEnded { exit: u64 },
    #[error("malformed log: {0}")]
    Malformed(String),
}

/// How a replay ended.
#[derive(Clone, Debug)]
pub struct ReplaySummary {
    pub exits: u64,
    pub entries: u64,
    pub outputs: u64,
    pub state_hash: [u8; 32],
    pub guest_exit_code: Option<u32>,
}

/// Where a replay stopped.
pub enum ReplayEnd {
    /// The log's `Halt` was reached and matched.
    Halted(ReplaySummary),
    /// The log ended (the source returned `None`) before a `Halt`: the VM
    /// can be taken over by a recorder at that exit.
    LogEnded(Handover),
}

/// A replayed output that matched the log: its frame, the entry that
/// recorded it, and the guest clock then.
pub struct ReplayedOutput<'a> {
    pub frame: &'a [u8],
    pub seq: u64,
    pub clock_ns: u64,
}

pub struct Replayer {
    machine: Machine,
    peeked: Option<Entry>,
    exits: u64,
    entries: u64,
    outputs: u64,
    clock_ns: u64,
    /// The next sequence number expected (one past the last applied).
    next_seq: u64,
}

/// What the log says next, from the point of view of exit `exit`.
enum Next {
    /// An entry for this exit.
    Entry(Entry),
    /// The next entry is for a later exit: this one is complete.
    LaterExit,
    /// The log has ended.
    End,
}

enum Step {
    Continue,
    Halted(ReplaySummary),
    Ended(EndedAt),
}

/// An exit cut short by the end of the log.
struct EndedAt {
    position: Position,
    request: Request,
    inputs: Vec<Payload>,
}

impl Replayer {
    pub fn new(machine: Machine) -> Self {
        Replayer {
            machine,
            peeked: None,
            exits: 0,
            entries: 0,
            outputs: 0,
            clock_ns: 0,
            next_seq: 0,
        }
    }

    /// Replays until the log's `Halt` or its end; every output frame the
    /// guest produces (and that matched the log) is passed to `on_output`.
    pub fn run(
        mut self,
        source: &mut dyn EntrySource,
        on_output: &mut dyn FnMut(ReplayedOutput),
    ) -> Result<ReplayEnd, ReplayError> {
        loop {
            match self.step(source, on_output)? {
                Step::Continue => {}
                Step::Halted(summary) => return Ok(ReplayEnd::Halted(summary)),
                Step::Ended(ended) => {
                    return Ok(ReplayEnd::LogEnded(Handover {
                        machine: self.machine,
                        position: ended.position,
                        request: ended.request,
                        inputs: ended.inputs,
                        clock_ns: self.clock_ns,
                        next_seq: self.next_seq,
                    }))
                }
            }
        }
    }

    fn next_at(&mut self, source: &mut dyn EntrySource, exit: u64) -> Result<Next, ReplayError> {
        if self.peeked.is_none() {
            self.peeked = source.next_entry()?;
        }
        match &self.peeked {
            None => Ok(Next::End),
            Some(entry) if entry.position.exit == exit => {
                self.entries += 1;
                self.next_seq = entry.seq + 1;
                Ok(Next::Entry(self.peeked.take().expect("peeked")))
            }
            Some(entry) if entry.position.exit < exit => Err(ReplayError::Malformed(format!(
                "entry {} is for exit {}, which the guest has already passed",
                entry.seq, entry.position.exit
            ))),
            Some(_) => Ok(Next::LaterExit),
        }
    }

    fn diverged(&self, exit: u64, rip: u64, seq: Option<u64>, detail: String) -> ReplayError {
        ReplayError::Divergence(Divergence {
            exit,
            rip,
            seq,
            detail,
        })
    }

    /// Runs to the next exit and applies the log there.
    fn step(
        &mut self,
        source: &mut dyn EntrySource,
        on_output: &mut dyn FnMut(ReplayedOutput),
    ) -> Result<Step, ReplayError> {
        let exit_kind = self.machine.run_to_exit()?;
        let exit = self.exits;
        self.exits += 1;
        let rip = self.machine.rip()?;
        let position = Position { exit, rip };

        let mut request = match exit_kind {
            GuestExit::Exchange => exchange::take_request(self.machine.memory(), || rip)?,
            GuestExit::Halt(_) => {
                log_console(&exchange::take_console(self.machine.memory())?, true);
                Request::default()
            }
        };
        log_console(&request.console, true);
        let tx_frames = std::mem::take(&mut request.tx_frames);
        for (index, frame) in tx_frames.iter().enumerate() {
            let digest = output_digest(frame);
            let entry = match self.next_at(source, exit)? {
                Next::End => {
                    request.tx_frames = tx_frames[index..].to_vec();
                    return Ok(Step::Ended(EndedAt {
                        position,
                        request,
                        inputs: Vec::new(),
                    }));
                }
                Next::Entry(entry) => Some(entry),
                Next::LaterExit => None,
            };
            match entry {
                Some(Entry {
                    seq,
                    payload:
                        Payload::Output {
                            len,
                            digest: logged,
                        },
                    ..
                }) if len as usize == frame.len() && logged == digest => {
                    self.outputs += 1;
                    on_output(ReplayedOutput {
                        frame,
                        seq,
                        clock_ns: self.clock_ns,
                    });
                }
                other => {
                    let (seq, logged) = describe(other.as_ref());
                    return Err(self.diverged(
                        exit,
                        rip,
                        seq,
                        format!(
                            "the guest produced output frame {index} ({} bytes, digest {}) where the log has {logged}",
                            frame.len(),
                            hex(&digest)
                        ),
                    ));
                }
            }
        }

        // Matched outputs are applied: acknowledge them now rather than when
        // the exit is known to be complete, which for a guest about to wait
        // only happens once the primary logs something at a later exit.
        if !tx_frames.is_empty() {
            source.applied(self.next_seq - 1);
        }

        let mut inputs = Vec::new();
        loop {
            let entry = match self.next_at(source, exit)? {
                Next::Entry(entry) => entry,
                Next::LaterExit => break,
                Next::End if matches!(exit_kind, GuestExit::Exchange) => {
                    let inputs = inputs.into_iter().map(|e: Entry| e.payload).collect();
                    return Ok(Step::Ended(EndedAt {
                        position,
                        request,
                        inputs,
                    }));
                }
                Next::End => return Err(ReplayError::LogEnded { exit }),
            };
            if entry.position.rip != rip {
                return Err(self.diverged(
                    exit,
                    rip,
                    Some(entry.seq),
                    format!("the log expects rip {:#x}", entry.position.rip),
                ));
            }
            match entry.payload {
                Payload::Output { len, .. } => {
                    return Err(self.diverged(
                        exit,
                        rip,
                        Some(entry.seq),
                        format!(
                            "the log records a {len}-byte output frame the guest did not produce"
                        ),
                    ))
                }
                Payload::Halt {
                    state_hash,
                    guest_exit_code,
                } => {
                    return self
                        .finish(exit, rip, entry.seq, state_hash, guest_exit_code, exit_kind)
                        .map(Step::Halted)
                }
                _ => inputs.push(entry),
            }
        }
        if let GuestExit::Halt(code) = exit_kind {
            return Err(self.diverged(
                exit,
                rip,
                None,
                format!("the guest halted with code {code} but the log goes on"),
            ));
        }
        self.deliver(exit, rip, &inputs, request.wants_entropy)?;
        if self.next_seq > 0 {
            source.applied(self.next_seq - 1);
        }
        Ok(Step::Continue)
    }

    fn deliver(
        &mut self,
        exit: u64,
        rip: u64,
        inputs: &[Entry],
        wants_entropy: bool,
    ) -> Result<(), ReplayError> {
        let mut delivery = Delivery::default();
        for entry in inputs {
            match &entry.payload {
                Payload::RxFrame(frame) => {
                    if frame.len() > abi::FRAME_CAPACITY
                        || delivery.rx_frames.len() == abi::FRAME_SLOTS
                    {
                        return Err(ReplayError::Malformed(format!(
                            "entry {} delivers more than one exchange can hold",
                            entry.seq
                        )));
                    }
                    delivery.rx_frames.push(frame);
                }
                Payload::Clock(ns) if *ns >= self.clock_ns => delivery.clock_ns = Some(*ns),
                Payload::Clock(ns) => {
                    return Err(ReplayError::Malformed(format!(
                        "entry {} moves the guest clock back from {} to {ns}",
                        entry.seq, self.clock_ns
                    )))
                }
                Payload::Entropy(_) if !wants_entropy => {
                    return Err(self.diverged(
                        exit,
                        rip,
                        Some(entry.seq),
                        "the log delivers entropy the guest did not ask for".into(),
                    ))
                }
                Payload::Entropy(bytes) => delivery.entropy = Some(*bytes),
                Payload::Output { .. } | Payload::Halt { .. } => {
                    unreachable!("handled by the caller")
                }
            }
        }
        if wants_entropy && delivery.entropy.is_none() {
            return Err(self.diverged(
                exit,
                rip,
                None,
                "the guest asked for entropy but the log delivers none here".into(),
            ));
        }
        if let Some(ns) = delivery.clock_ns {
            self.clock_ns = ns;
        }
        exchange::deliver(self.machine.memory(), &delivery)?;
        Ok(())
    }

    fn finish(
        &mut self,
        exit: u64,
        rip: u64,
        seq: u64,
        logged_hash: [u8; 32],
        logged_code: Option<u32>,
        exit_kind: GuestExit,
    ) -> Result<ReplaySummary, ReplayError> {
        let guest_exit_code = match exit_kind {
            GuestExit::Halt(code) => Some(code),
            GuestExit::Exchange => None,
        };
        if guest_exit_code != logged_code {
            return Err(self.diverged(
                exit,
                rip,
                Some(seq),
                format!("the log ends with guest exit code {logged_code:?}, the replay with {guest_exit_code:?}"),
            ));
        }
        let state_hash = self.machine.state_hash()?;
        if state_hash != logged_hash {
            return Err(self.diverged(
                exit,
                rip,
                Some(seq),
                format!(
                    "final state hash {} differs from the logged {}",
                    hex(&state_hash),
                    hex(&logged_hash)
                ),
            ));
        }
        Ok(ReplaySummary {
            exits: self.exits,
            entries: self.entries,
            outputs: self.outputs,
            state_hash,
            guest_exit_code,
        })
    }
}

fn describe(entry: Option<&Entry>) -> (Option<u64>, String) {
    match entry {
        None => (None, "no more output at this exit".into()),
        Some(entry) => match &entry.payload {
            Payload::Output { len, digest } => (
                Some(entry.seq),
                format!("a {len}-byte output with digest {}", hex(digest)),
            ),
            _ => (Some(entry.seq), format!("a {} entry", entry.kind_name())),
        },
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
