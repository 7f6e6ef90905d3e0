//! Kith's persistence layer.
//!
//! - [`backend`]: an ordered key-value store of named trees with atomic
//!   batches, on disk ([`SledBackend`]) or in memory ([`MemoryBackend`], the
//!   twin tests and benchmarks use);
//! - [`store`]: the [`Store`] the engine uses on top — schema version and
//!   migrations, and an optional passphrase lock (Argon2id, values sealed
//!   with XChaCha20-Poly1305);
//! - [`profile`]: profile folders (`--profile NAME`, `KITH_HOME`) and the
//!   identity file in each, in the clear (format 1) or sealed under the
//!   profile's passphrase (format 2);
//! - [`private`]: files that hold secrets (account, device and node keys):
//!   owner-only permissions, fully synced, created atomically and never over
//!   an existing file, or deliberately replaced by an atomic rename.
//!
//! The store's lock and the sealed identity file share one derivation and
//! sealing scheme (Argon2id with bounded parameters, XChaCha20-Poly1305).
//!
//! Nothing is global: any number of stores can be open in one process.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backend;
pub mod private;
pub mod profile;
mod seal;
pub mod store;

pub use backend::{
    Backend, BackendError, Direction, Entries, MemoryBackend, Op, SledBackend, prefix_successor,
};
pub use store::{KdfParams, Migration, OpenError, Passphrase, Store, StoreError};
