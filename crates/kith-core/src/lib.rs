//! The Kith messenger engine, used alike by the desktop app, the terminal
//! client, tests and benchmarks; no GUI code lives here.
//!
//! - [`engine`]: the actor behind an async [`engine::Engine`] handle and a
//!   bounded event stream: friend requests through DHT request drops,
//!   messages with receipts, typing, edits and deletions, and a durable
//!   outbox retried with backoff.
//! - [`session`]: the end-to-end layer, one Olm double-ratchet session
//!   (vodozemac) per pair of devices, with prekeys small enough for the
//!   presence record and encrypted pickles for the store.
//! - [`history`]: conversations stored once per message ID, ordered by
//!   (Lamport, sender time, ID) and read a page at a time.
//! - [`frame`]: what devices send each other over the direct message
//!   protocol.
//! - [`join`]: a new device joining an account by link code; the engine
//!   keeps the account's op log and device list, and links new devices
//!   ([`engine::Engine::link_device`]).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod engine;
pub mod frame;
pub mod history;
pub mod join;
mod records;
pub mod session;

/// Version of the engine's store layout (`docs/storage.md`).
pub const SCHEMA_VERSION: u32 = 1;
