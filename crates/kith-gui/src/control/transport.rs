//! The control channel's transport, the one part of it that differs by
//! platform; everything above reads and writes a byte stream.
//!
//! - Unix: a Unix socket, `<profile>/kith.sock`. The profile's folder is
//!   0700, so only the user can connect. A socket file left by a process
//!   that died is replaced; the file is removed when serving stops.
//! - Windows: a named pipe, `\\.\pipe\kith-<16 hex digits>`, the digits a
//!   hash of the profile folder's canonical path (two profiles, two pipes).
//!   Remote clients are rejected. Another process serving the profile is
//!   detected by the pipe's first instance, which only one process can
//!   create; the pipe vanishes with the process, so nothing is left behind.

use std::io;
use std::path::{Path, PathBuf};

use kith_store::profile::Profile;

use super::ControlError;

#[cfg(unix)]
pub use unix::{Accepted, Connected, Listener, address, bind, connect};
#[cfg(windows)]
pub use windows::{Accepted, Connected, Listener, address, bind, connect};

fn already_running() -> ControlError {
    ControlError::Start("a kith daemon is already running for this profile".into())
}

fn cannot_listen(address: &Path, e: &io::Error) -> ControlError {
    ControlError::Start(format!("{}: {e}", address.display()))
}

#[cfg(unix)]
mod unix {
    use super::*;
    use tokio::net::{UnixListener, UnixStream};

    /// A connection accepted by a [`Listener`].
    pub type Accepted = UnixStream;
    /// A connection made by [`connect`].
    pub type Connected = UnixStream;

    /// The profile's control socket, `<profile>/kith.sock`.
    pub fn address(profile: &Profile) -> PathBuf {
        profile.dir().join("kith.sock")
    }

    /// A bound control socket.
    #[derive(Debug)]
    pub struct Listener {
        listener: UnixListener,
        path: PathBuf,
    }

    /// Binds the socket at `path`, replacing one left by a process that
    /// died (nobody answers on it).
    pub async fn bind(path: &Path) -> Result<Listener, ControlError> {
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(already_running());
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|e| cannot_listen(path, &e))?;
        Ok(Listener {
            listener,
            path: path.to_owned(),
        })
    }

    impl Listener {
        /// The next client. Cancel safe.
        pub async fn accept(&mut self) -> io::Result<Accepted> {
            self.listener.accept().await.map(|(stream, _)| stream)
        }

        /// Stops listening and removes the socket file.
        pub fn close(self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Connects to the socket at `path`, if something listens there.
    pub async fn connect(path: &Path) -> Option<Connected> {
        UnixStream::connect(path).await.ok()
    }
}

#[cfg(windows)]
mod windows {
    use std::time::Duration;

    use super::*;
    use tokio::net::windows::named_pipe::{
        ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
    };

    /// `ERROR_PIPE_BUSY`: the pipe exists but has no instance waiting for
    /// a client right now.
    const ERROR_PIPE_BUSY: i32 = 231;
    /// How often, and how far apart, [`connect`] tries a busy pipe again.
    const BUSY_TRIES: u32 = 40;
    const BUSY_WAIT: Duration = Duration::from_millis(50);
    /// How long [`Listener::accept`] waits after failing to create an
    /// instance, so that a caller trying again does not spin.
    const CREATE_RETRY: Duration = Duration::from_millis(100);

    /// A connection accepted by a [`Listener`].
    pub type Accepted = NamedPipeServer;
    /// A connection made by [`connect`].
    pub type Connected = NamedPipeClient;

    /// The profile's named pipe, `\\.\pipe\kith-<hash of its folder>`.
    pub fn address(profile: &Profile) -> PathBuf {
        PathBuf::from(pipe_name(profile.dir()))
    }

    /// A new instance of the pipe, local clients only; `first` fails if
    /// the pipe exists already.
    fn instance(pipe: &Path, first: bool) -> io::Result<NamedPipeServer> {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create(pipe)
    }

    /// A listening named pipe. One instance always waits for the next
    /// client, so that a client never finds the pipe missing.
    #[derive(Debug)]
    pub struct Listener {
        pipe: PathBuf,
        next: Option<NamedPipeServer>,
    }

    /// Creates the pipe's first instance; fails if another process
    /// serves the pipe.
    pub async fn bind(pipe: &Path) -> Result<Listener, ControlError> {
        match instance(pipe, true) {
            Ok(server) => Ok(Listener {
                pipe: pipe.to_owned(),
                next: Some(server),
            }),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(already_running()),
            Err(e) => Err(cannot_listen(pipe, &e)),
        }
    }

    impl Listener {
        /// The next client. Cancel safe: [`NamedPipeServer::connect`] is,
        /// and the waiting instance stays in `self` until it is handed out.
        pub async fn accept(&mut self) -> io::Result<Accepted> {
            if self.next.is_none() {
                match instance(&self.pipe, false) {
                    Ok(server) => self.next = Some(server),
                    Err(e) => {
                        tokio::time::sleep(CREATE_RETRY).await;
                        return Err(e);
                    }
                }
            }
            if let Some(server) = &self.next
                && let Err(e) = server.connect().await
            {
                // A fresh instance before this one goes.
                self.next = instance(&self.pipe, false).ok();
                return Err(e);
            }
            // The next instance waits before the connected one is handed
            // out.
            let next = instance(&self.pipe, false).ok();
            std::mem::replace(&mut self.next, next)
                .ok_or_else(|| io::Error::other("no pipe instance"))
        }

        /// Stops listening: the pipe goes with its last instance.
        pub fn close(self) {}
    }

    /// Connects to the pipe, if a process serves it. A pipe whose
    /// instances are all taken for a moment is tried again for up to two
    /// seconds.
    pub async fn connect(pipe: &Path) -> Option<Connected> {
        for _ in 0..BUSY_TRIES {
            match ClientOptions::new().open(pipe) {
                Ok(client) => return Some(client),
                Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                    tokio::time::sleep(BUSY_WAIT).await;
                }
                Err(_) => return None,
            }
        }
        None
    }
}

/// The name of the named pipe serving the profile in `dir`:
/// `\\.\pipe\kith-` and a 64-bit FNV-1a hash of the folder's canonical
/// path, in hex. FNV-1a is fixed and written out here, so every build of
/// `kith` agrees on the name (std's hashers may change between Rust
/// releases).
#[cfg(any(windows, test))]
fn pipe_name(dir: &Path) -> String {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.to_string_lossy().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!(r"\\.\pipe\kith-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::pipe_name;

    #[test]
    fn pipe_names_follow_the_profile_folder() {
        let base = tempfile::tempdir().unwrap();
        let alice = base.path().join("alice");
        let bob = base.path().join("bob");
        std::fs::create_dir(&alice).unwrap();
        std::fs::create_dir(&bob).unwrap();

        let name = pipe_name(&alice);
        assert!(name.starts_with(r"\\.\pipe\kith-"), "{name}");
        assert_eq!(name.len(), r"\\.\pipe\kith-".len() + 16);
        assert!(!name[r"\\.\pipe\".len()..].contains('\\'), "{name}");
        // The same folder, however it is spelled; another folder, another
        // pipe.
        assert_eq!(pipe_name(&alice.join("..").join("alice")), name);
        assert_ne!(pipe_name(&bob), name);
    }

    #[test]
    fn the_pipe_hash_is_fnv_1a() {
        // FNV-1a 64 of "" and "a" (the published test vectors): a folder
        // that does not exist is hashed as written.
        assert_eq!(pipe_name("".as_ref()), r"\\.\pipe\kith-cbf29ce484222325");
        assert_eq!(pipe_name("a".as_ref()), r"\\.\pipe\kith-af63dc4c8601ec8c");
    }
}
