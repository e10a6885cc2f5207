//! `agent replay`: applies a recorded log to a fresh VM and checks it.

use agent::pcap::PcapWriter;
use anyhow::{bail, Context, Result};
use ftlog::LogReader;
use std::path::PathBuf;
use std::process::ExitCode;
use vmm::replay::hex;
use vmm::replay::ReplayedOutput;
use vmm::{GuestImage, Machine, ReplayEnd, ReplayError, Replayer};

/// Exit code for a divergence, distinct from other failures.
const EXIT_DIVERGENCE: u8 = 2;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Guest ELF image (must be the one the log was recorded with).
    #[arg(long)]
    guest: PathBuf,
    /// The recorded log.
    #[arg(long)]
    log: PathBuf,
    /// Write every replayed output frame to this pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
}

pub fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let image = GuestImage::from_file(&args.guest)?;
    let mut reader =
        LogReader::open(&args.log).with_context(|| format!("open log {}", args.log.display()))?;
    let header = *reader.header();
    if header.image_hash != image.hash() {
        bail!(
            "the log was recorded with guest image {}, but {} is {}",
            hex(&header.image_hash),
            args.guest.display(),
            hex(&image.hash())
        );
    }
    let machine = Machine::new(&image, &header.config).context("create the VM")?;
    let mut pcap = args
        .pcap
        .as_deref()
        .map(PcapWriter::create)
        .transpose()
        .context("create pcap")?;
    let mut pcap_error = None;
    let mut on_output = |output: ReplayedOutput| {
        if let Some(pcap) = &mut pcap {
            if let Err(e) = pcap.write(&output.frame, output.clock_ns) {
                pcap_error.get_or_insert(e);
            }
        }
    };
    let result = Replayer::new(machine).run(&mut reader, &mut on_output);
    if let Some(e) = pcap_error {
        return Err(e).context("write pcap");
    }
    if let Some(pcap) = &mut pcap {
        pcap.flush()?;
    }
    match result {
        Ok(ReplayEnd::LogEnded(handover)) => bail!(
            "the log ends at exit {} without a halt record (the recording was cut short)",
            handover.position().exit
        ),
        Ok(ReplayEnd::Halted(summary)) => {
            println!(
                "state_hash={} exits={} entries={} outputs={} guest_exit_code={}",
                hex(&summary.state_hash),
                summary.exits,
                summary.entries,
                summary.outputs,
                summary
                    .guest_exit_code
                    .map_or("none".into(), |c| c.to_string()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ReplayError::Divergence(d)) => {
            println!(
                "divergence exit={} seq={}",
                d.exit,
                d.seq.map_or("none".into(), |s| s.to_string())
            );
            eprintln!("agent: {d}");
            Ok(ExitCode::from(EXIT_DIVERGENCE))
        }
        Err(e) => Err(e.into()),
    }
}
