//! Kith: the desktop app and its command line (work in progress).

fn main() {}
