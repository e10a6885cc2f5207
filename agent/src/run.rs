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
    #[arg(long, conflicts_with = "xdp", required_unless_present = "xdp")]
    tap: Option<String>,
    /// Host NIC to serve the guest through with XDP and AF_XDP: the
    /// service's frames are steered to the guest, the rest pass to the host.
    #[arg(long)]
    xdp: Option<String>,
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
    // Before any thread exists (the NIC backends start their own), so that
    // every thread inherits the mask and only the signal thread sees them.
    let stop_signals = block_stop_signals()?;
    let config = guest_config(&args.mac, &args.ip, args.gateway)?;
    let image = GuestImage::from_file(&args.guest)?;
    let machine = Machine::new(&image, &config).context("create the VM")?;
    let (nic_rx, nic_tx, xdp_control) = open_nic(&args, &config)?;

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
        nic: nic_tx,
        pcap: args
            .pcap
            .as_deref()
            .map(PcapWriter::create)
            .transpose()
            .context("create pcap")?,
        send_errors: 0,
    };

    let (inputs_tx, inputs_rx) = sync_channel(args.rx_queue);
    let shutdown = Arc::new(AtomicBool::new(false));
    let queue_drops = Arc::new(AtomicU64::new(0));
    let rx_thread = spawn_rx_thread(
        nic_rx,
        inputs_tx.clone(),
        shutdown.clone(),
        queue_drops.clone(),
    );
    spawn_signal_thread(stop_signals, inputs_tx);

    tracing::info!(
        guest = %args.guest.display(),
        nic = args.tap.as_deref().or(args.xdp.as_deref()).unwrap_or_default(),
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
    if let Some(control) = xdp_control {
        if let Ok(counters) = control.counters() {
            tracing::info!(?counters, "XDP datapath");
        }
        control.detach();
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

type Nic = (Box<dyn NicRx>, Box<dyn NicTx>, Option<xdpnet::PortControl>);

/// Opens the chosen backend. With XDP this host takes the service address
/// at once (it is the only node) and announces it with a gratuitous ARP.
fn open_nic(args: &RunArgs, config: &ftlog::GuestConfig) -> Result<Nic> {
    if let Some(iface) = &args.xdp {
        let port =
            xdpnet::XdpPort::open(iface, config.mac, config.ipv4.into(), xdpnet::Role::Primary)
                .with_context(|| format!("attach XDP to {iface}"))?;
        tracing::info!(iface, mode = ?port.attach_mode(), queues = port.queues(), "XDP datapath attached");
        let control = port.control();
        let (rx, mut tx) = port.split();
        tx.send_gratuitous_arp()
            .context("announce the service address")?;
        return Ok((Box::new(rx), Box::new(tx), Some(control)));
    }
    let tap = args.tap.as_deref().expect("clap requires --tap or --xdp");
    let (rx, tx) = nic::tap::open(tap).with_context(|| format!("open TAP {tap}"))?;
    Ok((Box::new(rx), Box::new(tx), None))
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
