//! Nothing of the datapath outlives the agent: not after a normal exit, not
//! after SIGKILL, and what an older agent left behind is removed at start.
//! Checked with `ip link` (XDP), `tc filter` (legacy fence), bpftool
//! (program ids) and by behaviour (does a service-MAC frame leave?).
//!
//! Needs root and `cargo xtask build-ebpf` (bpftool, the eBPF object).

mod xdp_support;

use anyhow::{Context, Result};
use aya::maps::Array;
use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use ft_tests::{run, target_dir, wait_for, ScratchDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use xdp_support::*;

const SECOND: Duration = Duration::from_secs(1);

/// Whether a frame from the service MAC, sent by the host stack, reaches
/// the peer (i.e. no fence is in force).
fn service_frame_leaves(topo: &Topo, tag: &str) -> Result<bool> {
    topo.crossed_from_host_stack(SERVICE_MAC, tag)
}

/// Asserts that the host interface carries nothing of ours and that the
/// given programs are gone from the kernel.
fn assert_nothing_left(topo: &Topo, programs: &[u32], tag: &str) -> Result<()> {
    wait_for("programs unloaded", 5 * SECOND, || {
        Ok(programs.iter().all(|&id| !prog_exists(id)).then_some(()))
    })?;
    assert_eq!(
        topo.xdp_prog_on_host()?,
        None,
        "XDP program left on the link"
    );
    let filters = topo.tc_egress_filters()?;
    assert!(!filters.contains("ft_fence"), "fence left: {filters}");
    assert!(
        service_frame_leaves(topo, tag)?,
        "a fence still drops the service MAC"
    );
    Ok(())
}

#[test]
fn xdp_normal_exit_leaves_nothing_attached() -> Result<()> {
    let topo = Topo::new("xn", None)?;
    let probe = Probe::start(&topo.host, HOST_IF, "backup")?;
    let ids = probe.prog_ids();
    assert_eq!(topo.xdp_prog_on_host()?, Some(ids[0]));
    assert!(prog_exists(ids[0]) && prog_exists(ids[1]));
    assert!(
        !service_frame_leaves(&topo, "while-attached")?,
        "fence not in force"
    );

    probe.quit()?;
    assert_nothing_left(&topo, &ids, "after-exit")
}

#[test]
fn xdp_sigkill_then_restart_leaves_no_stale_attachment() -> Result<()> {
    let topo = Topo::new("xk", None)?;
    let probe = Probe::start(&topo.host, HOST_IF, "backup")?;
    let ids = probe.prog_ids();
    assert!(
        !service_frame_leaves(&topo, "before-kill")?,
        "fence not in force"
    );

    probe.kill()?;
    assert_nothing_left(&topo, &ids, "after-kill")?;

    // The restarted agent attaches afresh and works.
    let mut probe = Probe::start(&topo.host, HOST_IF, "primary")?;
    let new_ids = probe.prog_ids();
    assert_eq!(topo.xdp_prog_on_host()?, Some(new_ids[0]));
    topo.deliver(&probe, "after-restart")?;
    probe.cmd("role backup")?;
    assert!(
        !service_frame_leaves(&topo, "restarted-backup")?,
        "fence not in force"
    );
    probe.quit()?;
    assert_nothing_left(&topo, &new_ids, "after-second-exit")
}

#[test]
fn xdp_second_agent_on_the_same_interface_is_refused() -> Result<()> {
    let topo = Topo::new("xd", None)?;
    let first = Probe::start(&topo.host, HOST_IF, "primary")?;
    let err = Probe::start_failing(&topo.host, HOST_IF, "primary")?;
    assert!(err.contains("another agent"), "{err}");
    // The first one is untouched.
    assert_eq!(topo.xdp_prog_on_host()?, Some(first.xdp_prog_id()));
    topo.deliver(&first, "still-first")?;
    first.quit()
}

#[test]
fn xdp_open_removes_legacy_leftovers_of_a_crashed_agent() -> Result<()> {
    let topo = Topo::new("xc", None)?;
    let planted = plant_legacy_leftovers(&topo)?;
    assert_eq!(topo.xdp_prog_on_host()?, Some(planted[0]));
    assert!(topo.tc_egress_filters()?.contains("ft_fence"));
    assert!(
        !service_frame_leaves(&topo, "stale-fence")?,
        "planted fence not in force"
    );

    let probe = Probe::start(&topo.host, HOST_IF, "primary")?;
    wait_for("the cleanup logged", 5 * SECOND, || {
        let log = probe.stderr();
        let both =
            log.contains("removed a stale tc fence") && log.contains("removed a stale XDP program");
        Ok(both.then_some(()))
    })?;
    wait_for("stale programs unloaded", 5 * SECOND, || {
        Ok(planted.iter().all(|&id| !prog_exists(id)).then_some(()))
    })?;
    assert_eq!(topo.xdp_prog_on_host()?, Some(probe.xdp_prog_id()));
    let filters = topo.tc_egress_filters()?;
    assert!(!filters.contains("ft_fence"), "stale fence left: {filters}");
    assert!(service_frame_leaves(&topo, "primary-after-cleanup")?);
    topo.deliver(&probe, "after-cleanup")?;
    probe.quit()
}

/// What an agent on an older kernel leaves when it crashes: `ft_xdp`
/// attached through netlink and `ft_fence` as a clsact filter, both set up
/// for the service with the role "backup" (so they would silence a new
/// primary). Returns their program ids.
fn plant_legacy_leftovers(topo: &Topo) -> Result<[u32; 2]> {
    let object = target_dir().join("../bpf/ft-ebpf.o");
    assert!(
        object.exists(),
        "{} is missing: run `cargo xtask build-ebpf` first",
        object.display()
    );
    let bpffs = BpfFs::mount()?;
    let pin = bpffs.path().join("ft_xdp");
    let ids = topo.host.run_in(|| {
        let mut ebpf = aya::Ebpf::load_file(&object)?;
        let mut config = [0u8; 16]; // ebpf_common::ServiceConfig
        config[..6].copy_from_slice(&SERVICE_MAC);
        config[8..12].copy_from_slice(&SERVICE_IP);
        config[12..].copy_from_slice(&1792u32.to_ne_bytes());
        Array::<_, [u8; 16]>::try_from(ebpf.map_mut("FT_CONFIG").context("FT_CONFIG")?)?
            .set(0, config, 0)?;

        let xdp: &mut Xdp = ebpf.program_mut("ft_xdp").context("ft_xdp")?.try_into()?;
        xdp.load()?;
        xdp.pin(&pin)?;
        let xdp_id = xdp.info()?.id();

        let _ = tc::qdisc_add_clsact(HOST_IF);
        let fence: &mut SchedClassifier = ebpf
            .program_mut("ft_fence")
            .context("ft_fence")?
            .try_into()?;
        fence.load()?;
        let link = fence.attach_with_options(
            HOST_IF,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )?;
        // Leave the filter behind, as a process that dies does.
        std::mem::forget(fence.take_link(link)?);
        Ok([xdp_id, fence.info()?.id()])
    })?;
    // iproute2 attaches through netlink, which (unlike a bpf_link)
    // outlives every process; the pin goes with the bpffs mount.
    let pin = pin.to_str().context("pin path")?;
    topo.host.exec(&[
        "ip",
        "link",
        "set",
        "dev",
        HOST_IF,
        "xdpgeneric",
        "pinned",
        pin,
    ])?;
    Ok(ids)
}

/// A private bpffs mount in a scratch directory, unmounted on drop.
struct BpfFs {
    dir: ScratchDir,
}

impl BpfFs {
    fn mount() -> Result<Self> {
        let dir = ScratchDir::new("bpffs");
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path()))?;
        Ok(BpfFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
