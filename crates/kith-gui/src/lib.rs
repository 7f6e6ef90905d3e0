//! Kith, the desktop messenger: the `kith` binary's library.
//!
//! [`gui`] is the iced window that `kith` opens with no command; [`cli`]
//! parses the command line, [`terminal`] runs the messenger commands,
//! [`device`] joins a new profile to an account, and [`control`] runs the
//! engine as a daemon with a control socket, or for one command. The
//! window and the commands only render engine state and forward what the
//! user asks for, holding no protocol logic of their own.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod control;
pub mod device;
pub mod gui;
pub mod terminal;
