//! Kith, the desktop messenger: the `kith` binary's library.
//!
//! Today this is the command-line surface ([`cli`]), working in the profile
//! folders of `kith_store::profile`. The iced window (issue 7) joins it here; like
//! the command line it will only render engine state and forward what the
//! user asks for, holding no protocol logic of its own.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
