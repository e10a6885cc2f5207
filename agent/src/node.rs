//! The plumbing around a running guest, shared by primary and backup.
//!
//! Threads: the vCPU runs on the caller's thread (in a `Recorder` or a
//! `Replayer`); a receive thread moves frames from the NIC into the vCPU's
//! bounded input queue (the bounce buffer: dropping, and counting, when the
//! guest falls behind), forwarding each to the backup first; a signal thread turns SIGINT/SIGTERM into a stop at
//! the next exit. Signals are blocked in every other thread, so `KVM_RUN`
//! is never interrupted by them.

use crate::config::GuestArgs;
use crate::nic::{self, NicRx, NicTx};
use crate::pcap::PcapWriter;
use crate::protect::{FollowedLink, Protection};
use crate::status::Status;
use anyhow::{Context, Result};
use ftlog::{Entry, GuestConfig, LogWriter};
use nix::sys::signal::{SigSet, Signal};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm::{Input, LogSink, OutputSink, RunSummary};

/// Frames that may wait for the guest before new ones are dropped.
const RX_QUEUE: usize = 4096;

pub struct Node {
    inputs: Option<Receiver<Input>>,
    inputs_tx: SyncSender<Input>,
    /// Set once a stop signal arrived.
    pub stop: Arc<AtomicBool>,
    nic_rx: Option<Box<dyn NicRx>>,
    nic_tx: Option<Box<dyn NicTx>>,
    /// The XDP datapath's role switch, when the NIC is XDP.
    pub xdp: Option<xdpnet::PortControl>,
    shutdown: Arc<AtomicBool>,
    rx_thread: Option<JoinHandle<()>>,
    queue_drops: Arc<AtomicU64>,
}

impl Node {
    /// Blocks the stop signals (first, so every thread created later
    /// inherits the mask), opens the NIC in `role`, starts the signal thread.
    pub fn start(args: &GuestArgs, config: &GuestConfig, role: xdpnet::Role) -> Result<Node> {
        let signals = block_stop_signals()?;
        let (nic_rx, nic_tx, xdp) = nic::open(args, config, role)?;
        let (inputs_tx, inputs) = sync_channel(RX_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        spawn_signal_thread(signals, stop.clone(), inputs_tx.clone());
        Ok(Node {
            inputs: Some(inputs),
            inputs_tx,
            stop,
            nic_rx: Some(nic_rx),
            nic_tx: Some(nic_tx),
            xdp,
            shutdown: Arc::new(AtomicBool::new(false)),
            rx_thread: None,
            queue_drops: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues `frames` to the guest ahead of anything received: a backup
    /// gone live delivers the frames its primary took but never logged.
    pub fn queue_frames(&self, frames: Vec<Vec<u8>>) {
        for frame in frames {
            if self.inputs_tx.try_send(Input::Frame(frame)).is_err() {
                self.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Starts feeding received frames to the guest, each forwarded first
    /// to the backup `protection` names at the time, if any.
    pub fn start_receiving(&mut self, protection: Arc<Protection>) {
        if let Some(nic) = self.nic_rx.take() {
            self.rx_thread = Some(spawn_rx_thread(
                nic,
                Receiving {
                    inputs: self.inputs_tx.clone(),
                    protection,
                    followed: FollowedLink::default(),
                    drops: self.queue_drops.clone(),
                },
                self.shutdown.clone(),
            ));
        }
    }

    /// The vCPU's input queue (taken once, by the recorder).
    pub fn take_inputs(&mut self) -> Receiver<Input> {
        self.inputs.take().expect("the input queue is taken once")
    }

    /// A handle to stop the recorder at its next exit.
    pub fn input_sender(&self) -> SyncSender<Input> {
        self.inputs_tx.clone()
    }

    /// The NIC's transmit half (taken once, by whoever releases output).
    pub fn take_tx(&mut self) -> Box<dyn NicTx> {
        self.nic_tx.take().expect("the transmit half is taken once")
    }

    /// Stops receiving and detaches the datapath; returns the frames the
    /// input queue dropped.
    pub fn finish(mut self) -> u64 {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(thread) = self.rx_thread.take() {
            let _ = thread.join();
        }
        if let Some(control) = &self.xdp {
            if let Ok(counters) = control.counters() {
                tracing::info!(?counters, "XDP datapath");
            }
            control.detach();
        }
        self.queue_drops.load(Ordering::Relaxed)
    }
}

fn block_stop_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block signals")?;
    Ok(set)
}

fn spawn_signal_thread(set: SigSet, stop: Arc<AtomicBool>, inputs: SyncSender<Input>) {
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            tracing::info!(?signal, "stopping at the next exit");
            stop.store(true, Ordering::Relaxed);
            let _ = inputs.send(Input::Stop);
        }
    });
}

/// Where the receive thread puts a frame.
struct Receiving {
    inputs: SyncSender<Input>,
    protection: Arc<Protection>,
    followed: FollowedLink,
    drops: Arc<AtomicU64>,
}

impl Receiving {
    /// Forwards `frame` to the backup, then queues it to the guest: the
    /// backup has it before its position exists, so a frame taken here
    /// survives the primary's death at any moment after this.
    fn deliver(&mut self, frame: &[u8]) {
        let link = self
            .protection
            .follow(&mut self.followed)
            .filter(|_| Input::deliverable(frame));
        let forwarded = link.and_then(|link| Some((link, link.link().forward_frame(frame)?)));
        match self.inputs.try_send(Input::Frame(frame.to_vec())) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.drops.fetch_add(1, Ordering::Relaxed);
                if let Some((link, id)) = forwarded {
                    link.link().withdraw_frame(id);
                }
            }
        }
    }
}

fn spawn_rx_thread(
    mut nic: Box<dyn NicRx>,
    mut receiving: Receiving,
    shutdown: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            let mut deliver = |frame: &[u8]| receiving.deliver(frame);
            if let Err(e) = nic.recv(Duration::from_millis(100), &mut deliver) {
                tracing::error!("NIC receive failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

/// Where the recorder's entries go: an optional file, the replication
/// link while there is one; the status counts them.
pub struct NodeLog {
    pub file: Option<LogWriter>,
    pub protection: Arc<crate::protect::Protection>,
    link: crate::protect::FollowedLink,
    pub status: Arc<Status>,
    /// Ends a wait for a lagging backup.
    stop: Arc<AtomicBool>,
}

impl NodeLog {
    pub fn new(
        file: Option<LogWriter>,
        protection: Arc<crate::protect::Protection>,
        status: Arc<Status>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        NodeLog {
            file,
            protection,
            link: Default::default(),
            status,
            stop,
        }
    }

    /// Makes the file durable and lets go of the link (so whoever closes
    /// it holds the last handle); returns the bytes logged.
    pub fn finish(&mut self) -> Result<u64> {
        if let Some(file) = &mut self.file {
            file.sync()?;
        }
        self.link = Default::default();
        Ok(self.status.log_bytes.load(Ordering::Relaxed))
    }
}

impl LogSink for NodeLog {
    fn append(&mut self, entry: Entry) -> std::io::Result<()> {
        if let Some(file) = &mut self.file {
            file.append(&entry).map_err(std::io::Error::other)?;
        }
        let bytes = (ftlog::frame::FRAME_HEADER_LEN + entry.body_len()) as u64;
        if let Some(link) = self.protection.follow(&mut self.link) {
            link.send_entry(&entry, bytes, &self.stop);
        }
        self.status.log_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.status.entries.store(entry.seq + 1, Ordering::Relaxed);
        self.status
            .exits
            .store(entry.position.exit + 1, Ordering::Relaxed);
        Ok(())
    }
}

/// Sends output frames as soon as they are produced (no backup to wait for).
pub struct ReleaseNow {
    pub nic: Box<dyn NicTx>,
    pub pcap: Option<PcapWriter>,
    pub send_errors: u64,
    pub status: Arc<Status>,
}

impl ReleaseNow {
    pub fn send(&mut self, frame: &[u8], clock_ns: u64) -> std::io::Result<()> {
        if let Some(pcap) = &mut self.pcap {
            pcap.write(frame, clock_ns)?;
        }
        // A frame the NIC refuses is a lost packet, which TCP recovers from.
        if let Err(e) = self.nic.send(frame) {
            self.send_errors += 1;
            tracing::debug!("NIC send failed: {e}");
        }
        self.status.released_outputs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Transmits the frames `send` queued.
    pub fn flush(&mut self) {
        if let Err(e) = self.nic.flush() {
            self.send_errors += 1;
            tracing::debug!("NIC transmit failed: {e}");
        }
    }
}

impl OutputSink for ReleaseNow {
    fn output(&mut self, frame: Vec<u8>, _seq: u64, clock_ns: u64) -> std::io::Result<()> {
        self.send(&frame, clock_ns)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        ReleaseNow::flush(self);
        Ok(())
    }
}

/// Exit code of a node whose guest halted with an error.
const EXIT_GUEST_FAILED: u8 = 3;

/// How every recording run ends: the node is stopped, prints its
/// `key=value` summary line, and the guest's exit code becomes its own.
pub fn conclude(
    status: &Status,
    summary: &RunSummary,
    dropped_by_queue: u64,
    send_errors: u64,
    log_bytes: u64,
) -> ExitCode {
    status.set_role(crate::status::Role::Stopped);
    println!(
        "state_hash={} exits={} entries={} outputs={} rx_frames={} dropped_frames={} send_errors={} log_bytes={}",
        vmm::replay::hex(&summary.state_hash),
        summary.exits,
        summary.entries,
        summary.outputs,
        summary.rx_frames,
        summary.dropped_frames + dropped_by_queue,
        send_errors,
        log_bytes,
    );
    match summary.guest_exit_code {
        None | Some(0) => ExitCode::SUCCESS,
        Some(code) => {
            tracing::error!(
                code,
                "the guest halted with an error (see its console lines above)"
            );
            ExitCode::from(EXIT_GUEST_FAILED)
        }
    }
}
