//! `agent run`: the primary's main loop.
//!
//! Threads: the vCPU runs on the main thread inside the [`Recorder`]; a
//! receive thread moves frames from the NIC into the vCPU's bounded input
//! queue (dropping, and counting, when the guest falls behind); a signal
//! thread turns SIGINT/SIGTERM into a stop at the next exit. Signals are
//! blocked everywhere else, so `KVM_RUN` is never interrupted by them.

use crate::config::guest_config;
use crate::nic::{self, NicRx, NicTx};
use crate::pcap::PcapWriter;
use anyhow::{Context, Result};
use ftlog::{Entry, LogHeader, LogWriter};
use nix::sys::signal::{SigSet, Signal};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use vmm::{GuestClock, GuestImage, Input, LogSink, Machine, OutputSink, Recorder};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Guest ELF image.
    #[arg(long)]
    guest: PathBuf,
    /// TAP device to serve the guest's network through (created if missing).
    #[arg(long)]
    tap: String,
    /// The guest's (service) address with prefix length, e.g. 198.18.0.2/24.
    #[arg(long)]
    ip: String,
    /// The guest's (service) MAC address.
    #[arg(long)]
    mac: String,
    /// Default gateway for the guest.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// Record the log to this file (replay it with `agent replay`).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Also write every output frame to this pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Frames that may wait for the guest before new ones are dropped.
    #[arg(long, default_value_t = 4096)]
    rx_queue: usize,
}

struct FileLog(LogWriter);

impl LogSink for FileLog {
    fn append(&mut self, entry: Entry) -> std::io::Result<()> {
        self.0.append(&entry).map_err(std::io::Error::other)
    }
}

struct NoLog;

impl LogSink for NoLog {
    fn append(&mut self, _: Entry) -> std::io::Result<()> {
        Ok(())
    }
}

/// With no backup there is nobody to wait for: output leaves at once.
struct ReleaseNow {
    nic: Box<dyn NicTx>,
    pcap: Option<PcapWriter>,
    send_errors: u64,
}

impl OutputSink for ReleaseNow {
    fn output(&mut self, frame: Vec<u8>, _seq: u64, clock_ns: u64) -> std::io::Result<()> {
        if let Some(pcap) = &mut self.pcap {
            pcap.write(&frame, clock_ns)?;
        }
        // A frame the NIC refuses is a lost packet, which TCP recovers from.
        if let Err(e) = self.nic.send(&frame) {
            self.send_errors += 1;
            tracing::debug!("NIC send failed: {e}");
        }
        Ok(())
    }
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let config = guest_config(&args.mac, &args.ip, args.gateway)?;
    let image = GuestImage::from_file(&args.guest)?;
    let machine = Machine::new(&image, &config).context("create the VM")?;
    let (nic_rx, nic_tx) =
        nic::tap::open(&args.tap).with_context(|| format!("open TAP {}", args.tap))?;

    let mut log: Box<dyn LogSink> = match &args.record {
        Some(path) => {
            let header = LogHeader {
                image_hash: image.hash(),
                config,
            };
            let writer = LogWriter::create(path, &header)
                .with_context(|| format!("create {}", path.display()))?;
            Box::new(FileLog(writer))
        }
        None => Box::new(NoLog),
    };
    let mut output = ReleaseNow {
        nic: Box::new(nic_tx),
        pcap: args
            .pcap
            .as_deref()
            .map(PcapWriter::create)
            .transpose()
            .context("create pcap")?,
        send_errors: 0,
    };

    let stop_signals = block_stop_signals()?;
    let (inputs_tx, inputs_rx) = sync_channel(args.rx_queue);
    let shutdown = Arc::new(AtomicBool::new(false));
    let queue_drops = Arc::new(AtomicU64::new(0));
    let rx_thread = spawn_rx_thread(
        Box::new(nic_rx),
        inputs_tx.clone(),
        shutdown.clone(),
        queue_drops.clone(),
    );
    spawn_signal_thread(stop_signals, inputs_tx);

    tracing::info!(
        guest = %args.guest.display(),
        tap = %args.tap,
        ip = %args.ip,
        mac = %args.mac,
        "guest running"
    );
    let recorder = Recorder::new(machine, inputs_rx, GuestClock::starting_at(0));
    let result = recorder.run(log.as_mut(), &mut output);
    shutdown.store(true, Ordering::Relaxed);
    let _ = rx_thread.join();
    drop(log);
    if let Some(pcap) = &mut output.pcap {
        pcap.flush()?;
    }
    let summary = result?;
    let log_bytes = args
        .record
        .as_ref()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap_or(0);
    println!(
        "state_hash={} exits={} entries={} outputs={} rx_frames={} dropped_frames={} send_errors={} log_bytes={}",
        vmm::replay::hex(&summary.state_hash),
        summary.exits,
        summary.entries,
        summary.outputs,
        summary.rx_frames,
        summary.dropped_frames + queue_drops.load(Ordering::Relaxed),
        output.send_errors,
        log_bytes,
    );
    match summary.guest_exit_code {
        None | Some(0) => Ok(ExitCode::SUCCESS),
        Some(code) => {
            tracing::error!(
                code,
                "the guest halted with an error (see its console lines above)"
            );
            Ok(ExitCode::from(3))
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it spawns
/// from now on; returns the set for the signal thread to wait on.
fn block_stop_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block signals")?;
    Ok(set)
}

fn spawn_signal_thread(set: SigSet, inputs: SyncSender<Input>) {
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            tracing::info!(?signal, "stopping at the next exit");
            let _ = inputs.send(Input::Stop);
        }
    });
}

fn spawn_rx_thread(
    mut nic: Box<dyn NicRx>,
    inputs: SyncSender<Input>,
    shutdown: Arc<AtomicBool>,
    drops: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            let mut deliver = |frame: &[u8]| match inputs.try_send(Input::Frame(frame.to_vec())) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    drops.fetch_add(1, Ordering::Relaxed);
                }
            };
            if let Err(e) = nic.recv(Duration::from_millis(100), &mut deliver) {
                tracing::error!("NIC receive failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}
