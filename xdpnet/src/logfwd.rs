//! Forwards the eBPF programs' aya-log records to `tracing`, from a thread
//! that sleeps in poll(2) on the log ring buffer.

use aya_log::EbpfLogger;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;

/// Running forwarder; stopped (and joined) on drop.
pub struct LogForwarder {
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl LogForwarder {
    pub fn start(ebpf: &mut aya::Ebpf) -> Result<Self, crate::Error> {
        let logger = EbpfLogger::init_with_logger(ebpf, ToTracing)
            .map_err(|e| crate::Error::Load(format!("aya-log ring buffer: {e}")))?;
        // SAFETY: plain eventfd(2); the result is checked and owned at once.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(crate::Error::io("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let wake_fd = wake.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("xdpnet-log".into())
            .spawn(move || run(logger, wake_fd))
            .map_err(|e| crate::Error::io("spawn log thread", e))?;
        Ok(LogForwarder {
            wake,
            thread: Some(thread),
        })
    }
}

fn run(mut logger: EbpfLogger<ToTracing>, wake_fd: i32) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: logger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds; `wake_fd` outlives
        // this thread (the forwarder joins it before closing the eventfd).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
        logger.flush();
        if fds[1].revents != 0 {
            return;
        }
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A `log::Log` that re-emits each record as a `tracing` event.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "xdpnet::ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "xdpnet::ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "xdpnet::ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "xdpnet::ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "xdpnet::ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}
