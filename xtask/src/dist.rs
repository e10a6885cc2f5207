//! `cargo xtask dist`: the Debian package an operator installs on each
//! host: the binaries, the eBPF object, the guest image, the systemd units
//! and the commented example configurations, built with `dpkg-deb`.
//!
//! | path | what |
//! |---|---|
//! | `/usr/lib/ftvm/` | `agent`, `backup-agent`, `arbiter`, `ftctl` (side by side: a restarted agent becomes the backup-agent beside it), `ft-guest`, `ft-ebpf.o` (also built into the binaries) |
//! | `/lib/systemd/system/` | `ftvm-agent.service`, `ftvm-backup.service`, `ftvm-arbiter.service` |
//! | `/usr/share/doc/ftvm/` | `README.md`, `examples/*.toml` (copy them to `/etc/ftvm/` and edit) |

use crate::util::{prepare, run, workspace_root};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const BINARIES: [&str; 4] = ["agent", "backup-agent", "arbiter", "ftctl"];
const UNITS: [&str; 3] = [
    "ftvm-agent.service",
    "ftvm-backup.service",
    "ftvm-arbiter.service",
];
const EXAMPLES: [&str; 3] = ["agent.toml", "backup-agent.toml", "arbiter.toml"];

/// Builds everything and the package; returns its path.
pub fn dist() -> Result<PathBuf> {
    prepare()?;
    let root = workspace_root();
    let target = root.join("target");
    let stage = target.join("dist").join("root");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let lib = stage.join("usr/lib/ftvm");
    let units = stage.join("lib/systemd/system");
    let doc = stage.join("usr/share/doc/ftvm");
    for binary in BINARIES {
        install(&target.join("release").join(binary), &lib, 0o755)?;
    }
    install(&target.join("guest/ft-guest"), &lib, 0o644)?;
    install(&target.join("bpf/ft-ebpf.o"), &lib, 0o644)?;
    for unit in UNITS {
        install(&root.join("deploy/systemd").join(unit), &units, 0o644)?;
    }
    for example in EXAMPLES {
        install(
            &root.join("deploy").join(example),
            &doc.join("examples"),
            0o644,
        )?;
    }
    install(&root.join("README.md"), &doc, 0o644)?;

    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .context("run dpkg")?
            .stdout,
    )?
    .trim()
    .to_string();
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: ftvm\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: ftvm developers <ftvm@localhost>\n\
             Depends: libc6\n\
             Recommends: redis-tools\n\
             Section: admin\n\
             Priority: optional\n\
             Description: fault-tolerant VM proxy (KVM record/replay, XDP, arbiter)\n \
             A guest runs under KVM on a primary host; a backup host replays it\n \
             in lockstep from a log and goes live, open TCP connections included,\n \
             when the primary dies. Copy the examples from\n \
             /usr/share/doc/ftvm/examples to /etc/ftvm, then\n \
             systemctl enable --now ftvm-arbiter, ftvm-backup or ftvm-agent.\n"
        ),
    )?;
    let postinst = debian.join("postinst");
    std::fs::write(
        &postinst,
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
    )?;
    set_mode(&postinst, 0o755)?;
    let package = target
        .join("dist")
        .join(format!("ftvm_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&package))?;
    check(&package)?;
    println!("{}", package.display());
    Ok(package)
}

/// The package holds every file, and its binaries run once unpacked.
fn check(package: &Path) -> Result<()> {
    let contents = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(package)
        .output()?;
    let listing = String::from_utf8_lossy(&contents.stdout);
    let expected = BINARIES
        .iter()
        .map(|b| format!("./usr/lib/ftvm/{b}"))
        .chain([
            "./usr/lib/ftvm/ft-guest".into(),
            "./usr/lib/ftvm/ft-ebpf.o".into(),
        ])
        .chain(UNITS.iter().map(|u| format!("./lib/systemd/system/{u}")))
        .chain(
            EXAMPLES
                .iter()
                .map(|e| format!("./usr/share/doc/ftvm/examples/{e}")),
        );
    for path in expected {
        ensure!(
            listing.contains(&path),
            "{} lacks {path}:\n{listing}",
            package.display()
        );
    }
    let unpacked = package.with_extension("unpacked");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(package)
        .arg(&unpacked))?;
    for binary in BINARIES {
        let out = Command::new(unpacked.join("usr/lib/ftvm").join(binary))
            .arg("--help")
            .output()
            .with_context(|| format!("run the packaged {binary}"))?;
        ensure!(out.status.success(), "the packaged {binary} --help failed");
    }
    std::fs::remove_dir_all(&unpacked)?;
    // Installed for real, its units verify where they will live; then it
    // is removed again.
    run(Command::new("dpkg").arg("--install").arg(package))?;
    let verified = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS.iter().map(|u| format!("/lib/systemd/system/{u}"))));
    run(Command::new("dpkg").args(["--purge", "ftvm"]))?;
    verified
}

fn install(file: &Path, dir: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = file.file_name().context("a file name")?;
    let to = dir.join(name);
    std::fs::copy(file, &to).with_context(|| format!("copy {}", file.display()))?;
    set_mode(&to, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
