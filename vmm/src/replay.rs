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
use crate::record::{log_console, output_digest, CRASH_EXIT_CODE};
use crate::snapshot::ResumePoint;
use ftlog::{Entry, LogError, Payload, Position};
use guest_abi as abi;

/// Where the entries come from: a file, or the log channel (which blocks
/// until the next entry arrives, and ends when the primary is lost).
pub trait EntrySource {
    fn next_entry(&mut self) -> Result<Option<Entry>, LogError>;

    /// Every entry up to `seq` has been applied, or taken for the exit at
    /// hand (a handover carries those): called before waiting for more.
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

/// A replayed output that matched the log: its frame (handed over, so a
/// backup can keep it without a copy), the entry that recorded it, and the
/// guest clock then.
pub struct ReplayedOutput {
    pub frame: Vec<u8>,
    pub seq: u64,
    pub clock_ns: u64,
}

pub struct Replayer {
    machine: Machine,
    peeked: Option<Entry>,
    exits: u64,
    outputs: u64,
    clock_ns: u64,
    /// One past the last entry taken from the log (seqs start at 0 and have
    /// no gaps, so also the number of entries taken).
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
            outputs: 0,
            clock_ns: 0,
            next_seq: 0,
        }
    }

    /// Replays a log that continues from a snapshot taken at `point` (a
    /// backup that joined a running primary); `machine` holds that state.
    pub fn resume_from(machine: Machine, point: ResumePoint) -> Self {
        Replayer {
            machine,
            peeked: None,
            exits: point.next_exit,
            outputs: 0,
            clock_ns: point.clock_ns,
            next_seq: point.next_seq,
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

    /// The next entry if it belongs to the exit at `position`, which it
    /// must then match. Before waiting for the source, acknowledges what was
    /// taken so far: the primary holds outputs until then, and whether an
    /// exit is complete is only known when a later one logs something,
    /// which for a waiting guest may be never.
    fn next_at(
        &mut self,
        source: &mut dyn EntrySource,
        position: Position,
    ) -> Result<Next, ReplayError> {
        if self.peeked.is_none() {
            if self.next_seq > 0 {
                source.applied(self.next_seq - 1);
            }
            self.peeked = source.next_entry()?;
        }
        let Some(entry) = &self.peeked else {
            return Ok(Next::End);
        };
        if entry.position.exit > position.exit {
            return Ok(Next::LaterExit);
        }
        if entry.position.exit < position.exit {
            return Err(ReplayError::Malformed(format!(
                "entry {} is for exit {}, which the guest has already passed",
                entry.seq, entry.position.exit
            )));
        }
        if entry.position.rip != position.rip {
            return Err(diverged(
                position,
                Some(entry.seq),
                format!("the log expects rip {:#x}", entry.position.rip),
            ));
        }
        self.next_seq = entry.seq + 1;
        Ok(Next::Entry(self.peeked.take().expect("peeked")))
    }

    /// Runs to the next exit and applies the log there.
    fn step(
        &mut self,
        source: &mut dyn EntrySource,
        on_output: &mut dyn FnMut(ReplayedOutput),
    ) -> Result<Step, ReplayError> {
        let exit = self.exits;
        self.exits += 1;
        let exit_kind = match self.machine.run_to_exit() {
            Err(MachineError::GuestCrash { rip, reason }) => {
                return self.crashed(source, Position { exit, rip }, reason)
            }
            exit_kind => exit_kind?,
        };
        let rip = self.machine.rip()?;
        let position = Position { exit, rip };

        let mut request = match exit_kind {
            GuestExit::Exchange => match exchange::take_request(self.machine.memory(), || rip) {
                Err(MachineError::GuestCrash { reason, .. }) => {
                    return self.crashed(source, position, reason)
                }
                request => request?,
            },
            GuestExit::Halt(_) => Request {
                console: exchange::take_console(self.machine.memory())?,
                ..Request::default()
            },
        };
        log_console(&request.console, true);
        let mut tx_frames = std::mem::take(&mut request.tx_frames).into_iter();
        let mut index = 0;
        while let Some(frame) = tx_frames.next() {
            let digest = output_digest(&frame);
            let entry = match self.next_at(source, position)? {
                Next::End => {
                    request.tx_frames = std::iter::once(frame).chain(tx_frames).collect();
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
                    return Err(diverged(
                        position,
                        seq,
                        format!(
                            "the guest produced output frame {index} ({} bytes, digest {}) where the log has {logged}",
                            frame.len(),
                            hex(&digest)
                        ),
                    ));
                }
            }
            index += 1;
        }

        let mut inputs = Vec::new();
        loop {
            let entry = match self.next_at(source, position)? {
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
            match entry.payload {
                Payload::Output { len, .. } => {
                    return Err(diverged(
                        position,
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
                        .finish(position, entry.seq, state_hash, guest_exit_code, exit_kind)
                        .map(Step::Halted)
                }
                _ => inputs.push(entry),
            }
        }
        if let GuestExit::Halt(code) = exit_kind {
            return Err(diverged(
                position,
                None,
                format!("the guest halted with code {code} but the log goes on"),
            ));
        }
        self.deliver(position, &inputs, request.wants_entropy)?;
        Ok(Step::Continue)
    }

    /// The guest crashed at `position`: that ends the replay if the primary
    /// crashed there too (its log ends with a crash `Halt` at this exit).
    fn crashed(
        &mut self,
        source: &mut dyn EntrySource,
        position: Position,
        reason: String,
    ) -> Result<Step, ReplayError> {
        match self.next_at(source, position)? {
            Next::Entry(Entry {
                seq,
                payload:
                    Payload::Halt {
                        state_hash,
                        guest_exit_code: Some(CRASH_EXIT_CODE),
                    },
                ..
            }) => {
                tracing::error!(
                    rip = position.rip,
                    "the guest crashed as it did on the primary: {reason}"
                );
                let crash = GuestExit::Halt(CRASH_EXIT_CODE);
                self.finish(position, seq, state_hash, Some(CRASH_EXIT_CODE), crash)
                    .map(Step::Halted)
            }
            _ => Err(ReplayError::Machine(MachineError::GuestCrash {
                rip: position.rip,
                reason,
            })),
        }
    }

    fn deliver(
        &mut self,
        position: Position,
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
                    return Err(diverged(
                        position,
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
            return Err(diverged(
                position,
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
        position: Position,
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
            return Err(diverged(
                position,
                Some(seq),
                format!("the log ends with guest exit code {logged_code:?}, the replay with {guest_exit_code:?}"),
            ));
        }
        let state_hash = self.machine.state_hash()?;
        if state_hash != logged_hash {
            return Err(diverged(
                position,
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
            entries: self.next_seq,
            outputs: self.outputs,
            state_hash,
            guest_exit_code,
        })
    }
}

fn diverged(position: Position, seq: Option<u64>, detail: String) -> ReplayError {
    ReplayError::Divergence(Divergence {
        exit: position.exit,
        rip: position.rip,
        seq,
        detail,
    })
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
