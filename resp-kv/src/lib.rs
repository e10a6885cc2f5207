//! A Redis-protocol (RESP2) key-value engine with no I/O.
//!
//! The guest appliance feeds each TCP connection's bytes into a
//! [`Connection`] and sends back what [`Connection::process`] writes; all
//! connections share one [`Store`]. Everything is deterministic: the same
//! requests in the same order, at the same clock values given to
//! [`Store::set_time_ms`], give the same replies and the same state.
//!
//! ```
//! use resp_kv::{Connection, Limits, ProcessOutcome, Store};
//!
//! let mut store = Store::new(Limits::DEFAULT);
//! let mut conn = Connection::new();
//! let mut out = Vec::new();
//! conn.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\n");
//! assert_eq!(conn.process(&mut store, &mut out), ProcessOutcome::NeedInput);
//! assert_eq!(out, b"+OK\r\n$1\r\nv\r\n");
//! ```
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod command;
mod config;
mod conn;
mod hash;
mod num;
mod parse;
mod reply;
mod set;
mod store;
mod stream;
#[cfg(test)]
mod tests;
mod zset;

pub use conn::{Connection, ProcessOutcome};
pub use store::{Limits, Store};
