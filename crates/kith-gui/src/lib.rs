//! Kith, the desktop messenger: the `kith` binary's library.
//!
//! Today this is the command-line surface: [`cli`] parses, [`terminal`]
//! runs the messenger commands, [`device`] joins a new profile to an
//! account, and [`control`] runs the engine as a
//! daemon with a control socket, or for one command. The iced window (issue 7) joins it here; like
//! the command line it will only render engine state and forward what the
//! user asks for, holding no protocol logic of its own.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod control;
pub mod device;
pub mod terminal;
