//! Per-connection state: buffered input in, replies out.

use crate::command::{self, Flow};
use crate::parse::Parser;
use crate::reply;
use crate::store::Store;
use alloc::vec::Vec;

/// What the caller should do after [`Connection::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// Every complete request was executed; feed more input.
    NeedInput,
    /// The output reached [`Limits::reply_high_water`](crate::Limits):
    /// flush it, then call `process` again (complete requests remain).
    OutputFull,
    /// Send the output, then close the connection (after `QUIT` or a
    /// protocol error). Later input is ignored.
    Close,
}

/// One client connection.
///
/// Feed it the bytes as they arrive, in pieces of any size, then call
/// [`process`](Connection::process). Feed only after `NeedInput`: a
/// connection keeps everything fed until it is executed, and the limits
/// bound only the request that is still incomplete.
#[derive(Debug, Default)]
pub struct Connection {
    parser: Parser,
    closed: bool,
}

impl Connection {
    pub fn new() -> Connection {
        Connection::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.closed {
            self.parser.feed(bytes);
        }
    }

    /// Bytes fed but not yet executed.
    pub fn buffered(&self) -> usize {
        self.parser.buffered()
    }

    /// Executes the complete requests fed so far, in order, appending their
    /// replies to `out`.
    pub fn process(&mut self, store: &mut Store, out: &mut Vec<u8>) -> ProcessOutcome {
        let outcome = self.run(store, out);
        self.parser.compact();
        outcome
    }

    fn run(&mut self, store: &mut Store, out: &mut Vec<u8>) -> ProcessOutcome {
        let limits = *store.limits();
        while !self.closed {
            if out.len() >= limits.reply_high_water {
                return ProcessOutcome::OutputFull;
            }
            match self.parser.next_request(&limits) {
                Ok(None) => return ProcessOutcome::NeedInput,
                Ok(Some(args)) if args.is_empty() => {}
                Ok(Some(args)) => {
                    if command::execute(store, args, out) == Flow::Close {
                        self.close();
                    }
                }
                Err(error) => {
                    reply::error(out, error.message().as_bytes());
                    self.close();
                }
            }
        }
        ProcessOutcome::Close
    }

    fn close(&mut self) {
        self.closed = true;
        // Nothing after the closing request will be read: free it now.
        self.parser = Parser::default();
    }
}
