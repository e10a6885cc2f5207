//! The primary's engine: runs the guest, chooses the inputs delivered at
//! each exchange exit, and logs them with their position.
//!
//! Per exchange exit, in this order (replay follows the same order):
//! 1. take the guest's request; log an `Output` digest for each tx frame and
//!    hand the frame to the output sink, which holds it until the entry is
//!    safe (acknowledged by the backup, or at once when recording to a file);
//! 2. if a stop was requested, log `Halt` with the state hash and stop;
//! 3. gather inputs: pending rx frames, and if there are none and the guest
//!    asked to wait, block until a frame arrives or its deadline passes;
//! 4. deliver and log them: rx frames, the clock (when it moved by at least
//!    [`CLOCK_GRANULARITY_NS`] or the guest's deadline passed), entropy.

use crate::exchange::{self, Delivery, Request};
use crate::handover::Handover;
use crate::machine::{GuestExit, Machine, MachineError};
use crate::snapshot::ResumePoint;
use ftlog::{Entry, Payload, Position};
use guest_abi as abi;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The exit code a `Halt` entry records when the guest crashed (a fault,
/// or a broken exchange ABI) rather than halting: the replay must crash
/// at the same exit, and a backup then stops instead of going live into
/// the same crash.
pub const CRASH_EXIT_CODE: u32 = u32::MAX;

/// The clock is delivered at most once per this many ns while the guest
/// is busy, which bounds clock entries to 1000/s.
pub const CLOCK_GRANULARITY_NS: u64 = 1_000_000;

/// How often a waiting recorder counts a turn of progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What the outside world sends the recording vCPU.
#[derive(Debug)]
pub enum Input {
    /// An inbound frame, held here (the bounce buffer) until it is
    /// delivered at an exit.
    Frame(Vec<u8>),
    /// Stop at the next exit and log the final state.
    Stop,
    /// End a wait for input early (a [`Pause`] was requested): the guest
    /// sees a wake-up like any other, and the position stays an exit.
    Wake,
}

impl Input {
    /// Whether the guest can take `frame` at all (others are dropped and
    /// counted when they reach the vCPU).
    pub fn deliverable(frame: &[u8]) -> bool {
        !frame.is_empty() && frame.len() <= abi::FRAME_CAPACITY
    }
}

/// Work that needs the vCPU stopped (the last round of a state transfer),
/// run by the recording thread between two exits, at the [`ResumePoint`]
/// it is given. Whatever it appends to the log sink comes after it.
pub type PausedWork = Box<dyn FnOnce(&Machine, ResumePoint) + Send>;

/// A request for [`PausedWork`], shared with the recorder.
#[derive(Default)]
pub struct Pause {
    requested: AtomicBool,
    work: Mutex<Option<PausedWork>>,
}

impl Pause {
    /// Runs `work` before the guest's next exit (a waiting recorder must
    /// also be sent [`Input::Wake`]). A request not yet run is replaced.
    pub fn request(&self, work: PausedWork) {
        *self.work.lock().unwrap_or_else(PoisonError::into_inner) = Some(work);
        self.requested.store(true, Ordering::SeqCst);
    }

    fn take(&self) -> Option<PausedWork> {
        // A load first: the vCPU looks at every exit, and rarely finds work.
        if !self.requested.load(Ordering::Relaxed) || !self.requested.swap(false, Ordering::SeqCst)
        {
            return None;
        }
        self.work
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Where log entries go (a file, the log channel to the backup).
pub trait LogSink {
    fn append(&mut self, entry: Entry) -> std::io::Result<()>;
}

/// Where guest output frames go. `seq` is the log entry that records the
/// output: the frame may leave the host once every entry up to `seq` is safe.
pub trait OutputSink {
    fn output(&mut self, frame: Vec<u8>, seq: u64, clock_ns: u64) -> std::io::Result<()>;

    /// The outputs of one exit have all been handed over (a sink that
    /// batches sends them now).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("log sink: {0}")]
    Log(std::io::Error),
    #[error("output sink: {0}")]
    Output(std::io::Error),
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub exits: u64,
    pub entries: u64,
    pub outputs: u64,
    pub rx_frames: u64,
    pub dropped_frames: u64,
    pub state_hash: [u8; 32],
    pub guest_exit_code: Option<u32>,
}

/// An exchange exit being handled.
struct PendingExit {
    position: Position,
    request: Request,
    /// Inputs already chosen for this exit (by the log a replay followed).
    carried: Vec<Payload>,
}

enum NextExit {
    Exchange(PendingExit),
    Halt(Position, u32),
    Crash(Position, String),
}

/// The guest clock: nanoseconds since boot, from the host's monotonic clock.
pub struct GuestClock {
    anchor: Instant,
    base_ns: u64,
}

impl GuestClock {
    /// A clock that reads `base_ns` now (0 at boot; the last logged value
    /// when a backup goes live, so guest time never goes backwards).
    pub fn starting_at(base_ns: u64) -> Self {
        GuestClock {
            anchor: Instant::now(),
            base_ns,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base_ns + self.anchor.elapsed().as_nanos() as u64
    }

    /// The host instant at which the guest clock reads `guest_ns`.
    fn instant_of(&self, guest_ns: u64) -> Instant {
        self.anchor + Duration::from_nanos(guest_ns.saturating_sub(self.base_ns))
    }
}

pub struct Recorder {
    machine: Machine,
    /// An exit taken over from a replay, to be finished before running on.
    pending: Option<PendingExit>,
    inputs: Receiver<Input>,
    pause: Arc<Pause>,
    progress: Option<&'static AtomicU64>,
    clock: GuestClock,
    delivered_clock_ns: u64,
    next_seq: u64,
    exits: u64,
    stopping: bool,
    outputs: u64,
    rx_frames: u64,
    dropped_frames: u64,
}

impl Recorder {
    pub fn new(machine: Machine, inputs: Receiver<Input>, clock: GuestClock) -> Self {
        Recorder {
            machine,
            pending: None,
            inputs,
            pause: Arc::default(),
            progress: None,
            delivered_clock_ns: clock.now_ns(),
            clock,
            next_seq: 0,
            exits: 0,
            stopping: false,
            outputs: 0,
            rx_frames: 0,
            dropped_frames: 0,
        }
    }

    /// Runs until a stop is requested or the guest halts.
    pub fn run(
        mut self,
        log: &mut dyn LogSink,
        out: &mut dyn OutputSink,
    ) -> Result<RunSummary, RecordError> {
        loop {
            if let Some(summary) = self.step(log, out)? {
                return Ok(summary);
            }
        }
    }

    fn append(
        &mut self,
        log: &mut dyn LogSink,
        position: Position,
        payload: Payload,
    ) -> Result<u64, RecordError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        log.append(Entry {
            seq,
            position,
            payload,
        })
        .map_err(RecordError::Log)?;
        Ok(seq)
    }

    /// Takes over a VM whose replay reached the end of its log (a backup
    /// going live): the exit where the log ended is finished first, with the
    /// inputs of that exit that did arrive, then the guest runs on. The guest
    /// clock continues from the last value it was given.
    pub fn resume(handover: Handover, inputs: Receiver<Input>) -> Self {
        let clock = GuestClock::starting_at(handover.clock_ns);
        Recorder {
            machine: handover.machine,
            pending: Some(PendingExit {
                position: handover.position,
                request: handover.request,
                carried: handover.inputs,
            }),
            inputs,
            pause: Arc::default(),
            progress: None,
            delivered_clock_ns: handover.clock_ns,
            clock,
            next_seq: handover.next_seq,
            exits: handover.position.exit + 1,
            stopping: false,
            outputs: 0,
            rx_frames: 0,
            dropped_frames: 0,
        }
    }

    /// The recorder runs the work requested through `pause`.
    pub fn with_pause(mut self, pause: Arc<Pause>) -> Self {
        self.pause = pause;
        self
    }

    /// The recorder counts its turns in `progress`, and every
    /// [`PROGRESS_EVERY`] while it waits for input: whoever watches the
    /// counter (a service manager's watchdog) knows the vCPU loop lives.
    pub fn with_progress(mut self, progress: &'static AtomicU64) -> Self {
        self.progress = Some(progress);
        self
    }

    fn progressed(&self) {
        if let Some(progress) = self.progress {
            progress.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs the guest to its next exit and handles it; returns the summary
    /// once the run has ended.
    fn step(
        &mut self,
        log: &mut dyn LogSink,
        out: &mut dyn OutputSink,
    ) -> Result<Option<RunSummary>, RecordError> {
        self.progressed();
        if self.pending.is_none() {
            if let Some(work) = self.pause.take() {
                work(
                    &self.machine,
                    ResumePoint {
                        next_exit: self.exits,
                        next_seq: self.next_seq,
                        clock_ns: self.delivered_clock_ns,
                    },
                );
            }
        }
        let PendingExit {
            position,
            request,
            carried,
        } = match self.pending.take() {
            Some(pending) => pending,
            None => match self.next_exchange()? {
                NextExit::Exchange(pending) => pending,
                NextExit::Halt(position, code) => {
                    return self.finish(log, position, Some(code)).map(Some);
                }
                NextExit::Crash(position, reason) => {
                    self.finish(log, position, Some(CRASH_EXIT_CODE))?;
                    return Err(RecordError::Machine(MachineError::GuestCrash {
                        rip: position.rip,
                        reason,
                    }));
                }
            },
        };

        log_console(&request.console, false);
        let produced_output = !request.tx_frames.is_empty();
        for frame in request.tx_frames {
            let payload = Payload::Output {
                len: frame.len() as u32,
                digest: output_digest(&frame),
            };
            let seq = self.append(log, position, payload)?;
            self.outputs += 1;
            out.output(frame, seq, self.delivered_clock_ns)
                .map_err(RecordError::Output)?;
        }
        if produced_output {
            out.flush().map_err(RecordError::Output)?;
        }

        // Inputs of this exit a replay already received come first.
        let mut frames = Vec::new();
        let (mut carried_clock, mut carried_entropy) = (None, None);
        for payload in carried {
            match payload {
                Payload::RxFrame(frame) => frames.push(frame),
                Payload::Clock(ns) => carried_clock = Some(ns),
                Payload::Entropy(bytes) => carried_entropy = Some(bytes),
                Payload::Output { .. } | Payload::Halt { .. } => {}
            }
        }
        self.take_pending(&mut frames);
        let waits = request.wait_until_ns > self.delivered_clock_ns;
        if frames.is_empty() && waits && !self.stopping {
            let deadline = (request.wait_until_ns != abi::WAIT_FOREVER)
                .then(|| self.clock.instant_of(request.wait_until_ns));
            self.wait_for_input(deadline, &mut frames);
        }
        if self.stopping {
            return self.finish(log, position, None).map(Some);
        }

        let now = self
            .clock
            .now_ns()
            .max(self.delivered_clock_ns)
            .max(carried_clock.unwrap_or(0));
        let timer_fired = waits && now >= request.wait_until_ns;
        let clock_ns = (carried_clock.is_some()
            || timer_fired
            || now >= self.delivered_clock_ns + CLOCK_GRANULARITY_NS)
            .then_some(now);
        let entropy = request.wants_entropy.then(|| {
            carried_entropy.unwrap_or_else(|| {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).expect("the kernel's random source is available");
                bytes
            })
        });

        // Delivered first so the frames can then move into their entries
        // uncopied; the guest runs only after both.
        let delivery = Delivery {
            rx_frames: frames.iter().map(Vec::as_slice).collect(),
            clock_ns,
            entropy,
        };
        exchange::deliver(self.machine.memory(), &delivery)?;
        self.rx_frames += frames.len() as u64;
        for frame in frames {
            self.append(log, position, Payload::RxFrame(frame))?;
        }
        if let Some(ns) = clock_ns {
            self.append(log, position, Payload::Clock(ns))?;
            self.delivered_clock_ns = ns;
        }
        if let Some(bytes) = entropy {
            self.append(log, position, Payload::Entropy(bytes))?;
        }
        Ok(None)
    }

    /// Runs to the next guest-initiated exit and reads the guest's request.
    fn next_exchange(&mut self) -> Result<NextExit, RecordError> {
        let exit = match self.machine.run_to_exit() {
            Err(MachineError::GuestCrash { rip, reason }) => {
                let position = Position {
                    exit: self.exits,
                    rip,
                };
                self.exits += 1;
                return Ok(NextExit::Crash(position, reason));
            }
            exit => exit?,
        };
        let position = Position {
            exit: self.exits,
            rip: self.machine.rip()?,
        };
        self.exits += 1;
        if let GuestExit::Halt(code) = exit {
            log_console(&exchange::take_console(self.machine.memory())?, false);
            return Ok(NextExit::Halt(position, code));
        }
        let request = match exchange::take_request(self.machine.memory(), || position.rip) {
            Err(MachineError::GuestCrash { reason, .. }) => {
                return Ok(NextExit::Crash(position, reason))
            }
            request => request?,
        };
        Ok(NextExit::Exchange(PendingExit {
            position,
            request,
            carried: Vec::new(),
        }))
    }

    /// Moves pending inputs into `frames`, at most one exchange's worth.
    fn take_pending(&mut self, frames: &mut Vec<Vec<u8>>) {
        while frames.len() < abi::FRAME_SLOTS && !self.stopping {
            match self.inputs.try_recv() {
                Ok(input) => self.accept(input, frames),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.stopping = true,
            }
        }
    }

    /// Blocks until an input arrives or `deadline` passes, then takes
    /// whatever else is pending.
    fn wait_for_input(&mut self, deadline: Option<Instant>, frames: &mut Vec<Vec<u8>>) {
        let first = loop {
            let left = deadline.map_or(PROGRESS_EVERY, |at| {
                at.saturating_duration_since(Instant::now())
            });
            match self.inputs.recv_timeout(left.min(PROGRESS_EVERY)) {
                Err(RecvTimeoutError::Timeout) if deadline.is_none_or(|at| Instant::now() < at) => {
                    self.progressed()
                }
                first => break first,
            }
        };
        match first {
            Ok(input) => {
                self.accept(input, frames);
                self.take_pending(frames);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.stopping = true,
        }
    }

    fn accept(&mut self, input: Input, frames: &mut Vec<Vec<u8>>) {
        match input {
            Input::Frame(frame) if !Input::deliverable(&frame) => {
                self.dropped_frames += 1;
                tracing::debug!(len = frame.len(), "dropping a frame the guest cannot take");
            }
            Input::Frame(frame) => frames.push(frame),
            Input::Stop => self.stopping = true,
            Input::Wake => {}
        }
    }

    fn finish(
        &mut self,
        log: &mut dyn LogSink,
        position: Position,
        guest_exit_code: Option<u32>,
    ) -> Result<RunSummary, RecordError> {
        let state_hash = self.machine.state_hash()?;
        self.append(
            log,
            position,
            Payload::Halt {
                state_hash,
                guest_exit_code,
            },
        )?;
        Ok(RunSummary {
            exits: self.exits,
            entries: self.next_seq,
            outputs: self.outputs,
            rx_frames: self.rx_frames,
            dropped_frames: self.dropped_frames,
            state_hash,
            guest_exit_code,
        })
    }
}

/// The digest logged for an output frame (BLAKE3, truncated).
pub fn output_digest(frame: &[u8]) -> [u8; ftlog::OUTPUT_DIGEST_LEN] {
    let hash = blake3::hash(frame);
    hash.as_bytes()[..ftlog::OUTPUT_DIGEST_LEN]
        .try_into()
        .expect("digest is shorter than the hash")
}

/// Guest console text goes to the log, one line per event (at debug level
/// when replaying: the primary already said it).
pub(crate) fn log_console(console: &[u8], replaying: bool) {
    for line in String::from_utf8_lossy(console)
        .lines()
        .filter(|l| !l.is_empty())
    {
        if replaying {
            tracing::debug!(target: "guest", "{line}");
        } else {
            tracing::info!(target: "guest", "{line}");
        }
    }
}
