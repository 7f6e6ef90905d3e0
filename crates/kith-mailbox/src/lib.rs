//! Kith's offline mailbox above the data layer: the messages of the
//! `/kith/mailbox/1.0.0` request-response protocol, the volunteer that
//! keeps sealed items for accounts that are offline, and the user side that
//! deposits and fetches over the network. The volunteer itself does no
//! networking: it is a state machine that takes one encoded request (with the
//! peer it came from and the time) and returns the encoded response, so it
//! runs the same in a network event loop, a test or a benchmark.
//!
//! - [`protocol`]: [`Request`] and [`Response`], versioned, size-limited and
//!   strictly decoded; the values inside are the encodings of
//!   [`kith_proto::mailbox`] (items, receipts, challenges, proofs,
//!   acknowledgements, refusals).
//! - [`volunteer`]: [`Volunteer`], which checks deposits and hand-offs
//!   (rate, signature, proof of work, lifetime, quotas), stores each item
//!   with its witness receipts durably in a [`kith_store::Store`] before
//!   answering, serves them to the account that proves it owns the mailbox,
//!   a page at a time, deletes them on acknowledgement or at expiry, and
//!   lists what it holds for hand-offs.
//!
//! - [`user`]: the sender's and recipient's side over a
//!   [`kith_net::Client`]: deposit with the closest volunteers, fetch with a
//!   signed challenge, acknowledge.
//! - [`service`]: a volunteer at work on a node: a thread for its store,
//!   timers for expiry, and hand-offs as an address's closest set changes.
//!
//! Data flows: a sender's `Deposit` → [`Volunteer::handle`] → stored item
//! and receipt → `Accepted`; later the recipient's `Challenge` → `Fetch`
//! pages → `Ack` → deleted. The format is specified in `docs/mailbox.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod protocol;
pub mod service;
pub mod user;
pub mod volunteer;

pub use protocol::{Denial, Request, Response, StoredItem};
pub use volunteer::{Usage, Volunteer, VolunteerConfig, VolunteerError};
