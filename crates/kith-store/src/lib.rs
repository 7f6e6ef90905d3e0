//! Kith's persistence layer.
//!
//! Today it holds [`private`]: how Kith writes files that hold secrets
//! (account keys, device keys, node keys) — owner-only permissions, fully
//! synced, created atomically and never over an existing file. The sled-backed
//! store with its in-memory twin, schema versions and the passphrase lock
//! arrive with the messenger engine (issue 4) and build on the same helpers.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod private;
