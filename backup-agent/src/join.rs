//! Joining a running primary: its snapshot arrives in pre-copy rounds
//! (a later copy of a page replaces an earlier one), then its end. The
//! backup checks that the snapshot is of its own image and configuration,
//! restores the vCPU and computes the state digest of what it now holds
//! (each page's digest taken from RAM as the page arrives); only a digest
//! equal to the primary's lets it ack, and replay on.

use crate::source::ChannelSource;
use agent::status::Status;
use logchannel::{Event, Hello, SnapshotEnd};
use std::time::Instant;
use vmm::replay::hex;
use vmm::snapshot::{PageDigest, StateDigest, VcpuState, PAGE_SIZE};
use vmm::{Machine, ResumePoint};

/// How a join ended without a verified state.
pub enum JoinError {
    /// The snapshot is refused (the primary is told why).
    Refused(String),
    /// The session ended before the snapshot did: nothing to go live with.
    Lost,
}

/// Receives the snapshot into `machine` and verifies it against what this
/// backup runs (the image and configuration of its `hello`); returns where
/// the log continues.
pub fn receive(
    source: &mut ChannelSource,
    machine: &Machine,
    identity: &Hello,
    status: &Status,
) -> Result<ResumePoint, JoinError> {
    let started = Instant::now();
    let (mut pages, mut bytes) = (0u64, 0u64);
    status.transfer(|t| t.state = "copying".into());
    // Kept current as pages arrive, while the primary runs: its output
    // from the snapshot on waits for the check at the end.
    let mut digests = machine
        .page_digests()
        .map_err(|e| JoinError::Refused(format!("reading the fresh VM's RAM: {e}")))?;
    loop {
        let written = match source.next_snapshot_part().ok_or(JoinError::Lost)? {
            Event::SnapshotPages { first_pfn, data } => {
                let count = (data.len() / PAGE_SIZE) as u64;
                pages += count;
                bytes += data.len() as u64;
                machine
                    .write_pages(first_pfn, &data)
                    .and_then(|()| machine.refresh_page_digests(&mut digests, first_pfn, count))
            }
            Event::SnapshotZeros { first_pfn, count } => {
                pages += count;
                write_zeros(machine, first_pfn, count)
                    .and_then(|()| machine.refresh_page_digests(&mut digests, first_pfn, count))
            }
            Event::SnapshotEnd(end) => {
                let point =
                    verify(machine, &end, identity, &digests).map_err(JoinError::Refused)?;
                let digest = hex(&end.state_digest);
                tracing::info!(
                    pages,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    next_exit = point.next_exit,
                    next_seq = point.next_seq,
                    state_digest = %digest,
                    "joined: the primary's state verifies; replaying its log from here"
                );
                status.transfer(|t| {
                    t.state = "joined".into();
                    t.bytes = bytes;
                    t.total_ms = started.elapsed().as_secs_f64() * 1e3;
                    t.state_digest = digest;
                });
                return Ok(point);
            }
            other => unreachable!("only snapshot parts are queued: {other:?}"),
        };
        written.map_err(|e| JoinError::Refused(format!("a snapshot page does not fit: {e}")))?;
    }
}

fn write_zeros(machine: &Machine, first_pfn: u64, count: u64) -> Result<(), vmm::MachineError> {
    const CHUNK: u64 = 16;
    let zeros = [0u8; CHUNK as usize * PAGE_SIZE];
    let mut pfn = first_pfn;
    let end = first_pfn.saturating_add(count);
    while pfn < end {
        let n = (end - pfn).min(CHUNK);
        machine.write_pages(pfn, &zeros[..n as usize * PAGE_SIZE])?;
        pfn += n;
    }
    Ok(())
}

/// Checks the snapshot's end against this backup and its RAM (`pages`:
/// the digest of every page it holds); restores the vCPU.
fn verify(
    machine: &Machine,
    end: &SnapshotEnd,
    identity: &Hello,
    pages: &[PageDigest],
) -> Result<ResumePoint, String> {
    if end.image_hash != identity.image_hash {
        return Err(format!(
            "the snapshot is of guest image {}, this backup runs image {}",
            hex(&end.image_hash),
            hex(&identity.image_hash)
        ));
    }
    if end.config_hash != identity.config_hash {
        return Err(format!(
            "the snapshot is of guest configuration {}, this backup's is {}",
            hex(&end.config_hash),
            hex(&identity.config_hash)
        ));
    }
    let vcpu = VcpuState::decode(&end.vcpu).map_err(|e| format!("the snapshot's vCPU: {e}"))?;
    machine
        .restore_vcpu(&vcpu)
        .map_err(|e| format!("restoring the snapshot's vCPU: {e}"))?;
    let point = ResumePoint {
        next_exit: end.next_exit,
        next_seq: end.next_seq,
        clock_ns: end.clock_ns,
    };
    let digest = StateDigest {
        image_hash: &identity.image_hash,
        config_hash: &identity.config_hash,
        point,
        vcpu: &end.vcpu,
        pages,
    }
    .hash();
    if digest != end.state_digest {
        return Err(format!(
            "the transferred state does not verify: its digest is {}, the primary's {}",
            hex(&digest),
            hex(&end.state_digest)
        ));
    }
    Ok(point)
}
