//! The Kith messenger engine, used alike by the desktop app, the terminal
//! client, tests and benchmarks; no GUI code lives here.
//!
//! Built so far: [`session`], the end-to-end layer — one Olm double-ratchet
//! session (vodozemac) per pair of devices, with prekeys small enough for
//! the presence record and encrypted pickles for the store; and
//! [`history`], conversations stored once per message ID, ordered by
//! (Lamport, sender time, ID) and read a page at a time. The engine
//! proper (friend requests, messages, receipts, the durable outbox, behind
//! an async handle and an event stream) is next; see issue 4's notes.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod history;
pub mod session;
