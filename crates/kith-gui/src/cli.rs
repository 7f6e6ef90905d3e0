//! The `kith` command line.
//!
//! `kith id new|show|check|rotate` manage and inspect identities; `kith
//! daemon` runs the messenger in the background; `add`, `requests`,
//! `accept`, `decline`, `block`, `friends`, `send`, `edit`, `delete`,
//! `history`, `chat`, `safety`, `status` and `device add|list|remove` talk to that
//! daemon, or run the engine for the length of the command when no daemon
//! is running (see [`crate::control`]); `kith device link` joins a new
//! profile to an existing account (see [`crate::device`]). Every command takes `--profile NAME` (default
//! `default`), `--json` for scripts, `--bootstrap ADDR` and `--listen ADDR`.
//! Output meant for people goes to standard output, errors to standard
//! error with a non-zero exit status.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use kith_proto::link::{LinkCodeError, QrReadError};
use kith_proto::{KithId, KithIdError, qr};
use serde_json::{Value, json};

use crate::control::{ControlError, NodeOptions, passphrase_from_env};
use kith_store::private::{self, PrivateFileError};
use kith_store::profile::{DEFAULT_PROFILE, Identity, Profile, ProfileError};
use kith_store::{KdfParams, Passphrase, Store};

/// Kith: a peer-to-peer messenger with no server in the middle.
#[derive(Debug, Parser)]
#[command(name = "kith", version, about, long_about = None)]
pub struct Cli {
    /// Profile to use: a separate identity, friends and history. Profiles
    /// live under $KITH_HOME/profiles/, or the platform data folder.
    #[arg(long, global = true, default_value = DEFAULT_PROFILE, value_name = "NAME")]
    pub profile: String,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// A bootstrap node (`/ip4/…/tcp/…/p2p/…`, as `kithd` prints them);
    /// repeat for more. Also read from KITH_BOOTSTRAP, comma-separated.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        env = "KITH_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,

    /// Where to listen (default: every interface, TCP and QUIC, any port);
    /// repeat for more.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Vec<String>,

    /// Find friends' devices on the local network with mDNS.
    #[arg(long, global = true)]
    pub mdns: bool,

    /// What to do; with none, the app's window opens.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Whether the command keeps running until the user stops it (the
    /// window, `daemon`, `chat`), rather than doing one thing and exiting.
    pub fn runs_until_stopped(&self) -> bool {
        matches!(
            self.command,
            None | Some(Command::Daemon { .. } | Command::Chat { .. })
        )
    }
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, show and check Kith IDs.
    #[command(subcommand)]
    Id(IdCommand),
    /// Run the messenger in the background for this profile; other
    /// commands talk to it. Stops on Ctrl-C or SIGTERM.
    Daemon {
        /// Also keep offline mail for others, up to this many megabytes
        /// (64 when given without a number). Off by default.
        #[arg(long, value_name = "MB", num_args = 0..=1, default_missing_value = "64")]
        volunteer: Option<u64>,
    },
    /// Send a friend request to the owner of a Kith ID.
    Add {
        /// Their Kith ID or kith: link.
        id: String,
        /// A short note so they know who you are.
        message: Vec<String>,
    },
    /// List friend requests waiting for you, and yours not yet answered.
    Requests,
    /// Accept a friend request.
    Accept {
        /// Their name, ID, or the start of either.
        who: String,
    },
    /// Decline a friend request; later requests from them are ignored.
    Decline {
        /// Their name, ID, or the start of either.
        #[arg(required_unless_present = "all")]
        who: Option<String>,
        /// Decline every waiting request (after a flood of them).
        #[arg(long, conflicts_with = "who")]
        all: bool,
    },
    /// Block someone: their requests and messages are refused.
    Block {
        /// Their name, ID, or the start of either.
        who: String,
    },
    /// List your friends.
    Friends,
    /// Send a message.
    Send {
        /// The friend: name, ID, or the start of either.
        friend: String,
        /// The text (at most 16 KiB).
        #[arg(required = true)]
        text: Vec<String>,
        /// Without a daemon, wait up to this many seconds for delivery
        /// before leaving the message queued.
        #[arg(long, default_value_t = 15, value_name = "SECS")]
        wait: u64,
    },
    /// Replace the text of one of your messages.
    Edit {
        /// The friend.
        friend: String,
        /// The message ID (from `kith history --json`).
        message: String,
        /// The new text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Delete one of your messages.
    Delete {
        /// The friend.
        friend: String,
        /// The message ID.
        message: String,
    },
    /// Show the conversation with a friend (and mark it read).
    History {
        /// The friend.
        friend: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Chat with a friend: type a line to send it; their messages appear
    /// as they arrive. End with Ctrl-D.
    Chat {
        /// The friend.
        friend: String,
    },
    /// Show the safety number to compare with a friend.
    Safety {
        /// The friend.
        friend: String,
    },
    /// Show this device's network state.
    Status,
    /// Set the name new friends see (default: the profile's name).
    Name {
        /// The name.
        #[arg(required = true)]
        name: Vec<String>,
    },
    /// Use your account on more than one computer.
    #[command(subcommand)]
    Device(DeviceCommand),
}

/// `kith device …`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// On the NEW computer, in a profile with no account yet: show a link
    /// code, wait for `kith device add <code>` on a computer that has the
    /// account, and join that account.
    Link {
        /// Lock the new profile with a passphrase (from KITH_PASSPHRASE, or
        /// asked for).
        #[arg(long)]
        passphrase: bool,
        /// Also write the code's QR code as a PNG image to FILE.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// Join the account offered without asking (for scripts).
        #[arg(long)]
        yes: bool,
    },
    /// On a computer that has the account: link the new computer showing
    /// this code.
    Add {
        /// The link code (`kith-link:…`) the new computer shows.
        #[arg(required_unless_present = "image", value_name = "CODE")]
        code: Option<String>,
        /// A PNG or JPEG picture of the new computer's QR code.
        #[arg(long, value_name = "FILE", conflicts_with = "code")]
        image: Option<PathBuf>,
        /// The name to list the new computer under (default: "device N").
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List this account's devices.
    List,
    /// Remove a device from this account: friends and your other devices
    /// send it nothing new. Run it on another of your devices.
    Remove {
        /// The device's name, or at least 6 leading characters of its
        /// peer ID (see `kith device list`).
        device: String,
    },
}

/// `kith id …`
#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// Create a new identity (account and device keys) in the profile.
    New {
        /// Lock the profile with a passphrase (from KITH_PASSPHRASE, or
        /// asked for).
        #[arg(long)]
        passphrase: bool,
    },
    /// Pick a new nospam: your old ID stops working for new requests;
    /// friends are unaffected.
    Rotate,
    /// Show the profile's Kith ID.
    Show {
        /// Also draw the ID as a QR code in the terminal.
        #[arg(long)]
        qr: bool,
        /// Write the QR code as a PNG image to FILE.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// Write the QR code as an SVG image to FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Check a Kith ID or kith: link someone gave you, or read one from a
    /// QR code picture; prints the account key when it is valid.
    Check {
        /// The ID or link.
        #[arg(required_unless_present = "image", value_name = "ID")]
        id: Option<String>,
        /// A PNG or JPEG picture of a Kith QR code.
        #[arg(long, value_name = "FILE", conflicts_with = "id")]
        image: Option<PathBuf>,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The window could not open.
    #[error("the window: {0}")]
    Window(String),
    /// A profile problem.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The ID given is not valid.
    #[error("invalid Kith ID: {0}")]
    InvalidId(#[from] KithIdError),
    /// No ID could be read from the picture.
    #[error("{}: {source}", path.display())]
    QrImage {
        /// The picture.
        path: PathBuf,
        /// Why.
        source: qr::ReadError,
    },
    /// The QR code could not be drawn.
    #[error(transparent)]
    QrRender(#[from] qr::RenderError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Standard output could not be written.
    #[error("could not write output: {0}")]
    Output(#[from] std::io::Error),
    /// The messenger failed or refused.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// An address is not a multiaddr.
    #[error("invalid address '{0}': expected something like /ip4/192.0.2.1/tcp/4747/p2p/12D3Koo…")]
    Address(String),
    /// No passphrase for a locked profile, or a bad one.
    #[error("{0}")]
    Passphrase(String),
    /// A link code that cannot be used.
    #[error(transparent)]
    LinkCode(#[from] LinkCodeError),
    /// No link code could be read from the picture.
    #[error("{}: {source}", path.display())]
    LinkImage {
        /// The picture.
        path: PathBuf,
        /// Why.
        source: QrReadError,
    },
    /// `kith device link` in a profile that already has an account.
    #[error("profile {0} already has an account; use another --profile")]
    HasAccount(String),
    /// `kith device link` in a profile left with a database but no
    /// identity.
    #[error("profile {0} holds a database but no identity; use another --profile")]
    LeftoverData(String),
    /// Linking the new device failed; nothing was written.
    #[error("{0}; nothing was changed")]
    Join(#[from] kith_core::join::JoinFailure),
    /// The user did not accept the account offered.
    #[error("{0}; nothing was changed")]
    NotJoined(String),
}

/// Runs one command, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut impl Write) -> Result<(), CliError> {
    let Some(command) = &cli.command else {
        if let Some(why) = crate::gui::no_display() {
            return Err(CliError::Window(why));
        }
        let options = crate::gui::Options {
            profile: cli.profile.clone(),
            home: None,
            node: node_options(cli)?,
            report: (std::env::var_os("KITH_GUI_REPORT").as_deref() == Some("1".as_ref()))
                .then(std::time::Instant::now),
        };
        return crate::gui::run(options).map_err(|e| CliError::Window(e.to_string()));
    };
    match command {
        Command::Id(command) => run_id(cli, command, out),
        Command::Device(DeviceCommand::Link {
            passphrase,
            png,
            yes,
        }) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let options = crate::device::LinkOptions {
                passphrase: *passphrase,
                png: png.clone(),
                yes: *yes,
            };
            runtime.block_on(crate::device::link(cli, &options, out))
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(crate::terminal::run(cli, command, out))
        }
    }
}

/// The node options the global flags give.
pub fn node_options(cli: &Cli) -> Result<NodeOptions, CliError> {
    let parse = |list: &[String]| {
        list.iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| a.trim().parse().map_err(|_| CliError::Address(a.clone())))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(NodeOptions {
        bootstrap: parse(&cli.bootstrap)?,
        listen: parse(&cli.listen)?,
        mdns: cli.mdns,
        request_poll: None,
        volunteer_mb: match cli.command {
            Some(Command::Daemon { volunteer }) => volunteer,
            _ => None,
        },
    })
}

/// The passphrase for `profile`: KITH_PASSPHRASE, or asked for on the
/// terminal when the profile is locked; `None` when it is not locked.
pub fn passphrase_for(profile: &Profile) -> Result<Option<Passphrase>, CliError> {
    if let Some(passphrase) = passphrase_from_env() {
        return Ok(Some(passphrase));
    }
    if !profile.is_locked()? {
        return Ok(None);
    }
    ask_passphrase(&format!("Passphrase for profile '{}': ", profile.name())).map(Some)
}

/// The passphrase to lock a new profile with: KITH_PASSPHRASE, or asked
/// for on the terminal.
pub fn new_passphrase() -> Result<Passphrase, CliError> {
    match passphrase_from_env() {
        Some(p) => Ok(p),
        None => ask_passphrase("New passphrase: "),
    }
}

/// Creates the store of a new profile (`<profile>/db`), locked with `lock`
/// when given, as the engine will open it.
pub fn create_store(profile: &Profile, lock: Option<&Passphrase>) -> Result<Store, CliError> {
    let mut store = crate::control::open_store(profile, None)?;
    if let Some(passphrase) = lock {
        store
            .set_passphrase(Some(passphrase), KdfParams::INTERACTIVE)
            .map_err(|e| CliError::Passphrase(e.to_string()))?;
    }
    Ok(store)
}

fn ask_passphrase(prompt: &str) -> Result<Passphrase, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Passphrase(
            "this profile is locked: set KITH_PASSPHRASE or run in a terminal to be asked".into(),
        ));
    }
    rpassword::prompt_password(prompt)
        .map(Passphrase::new)
        .map_err(|e| CliError::Passphrase(format!("could not read the passphrase: {e}")))
}

fn run_id(cli: &Cli, command: &IdCommand, out: &mut impl Write) -> Result<(), CliError> {
    match command {
        IdCommand::Rotate => {
            let id = crate::terminal::rotate(cli)?;
            if cli.json {
                print_json(out, &json!({"id": id}))?;
            } else {
                writeln!(out, "Your new Kith ID: {id}")?;
                writeln!(
                    out,
                    "The old one no longer works for new friend requests; friends are unaffected."
                )?;
            }
        }
        IdCommand::New { passphrase } => {
            let profile = Profile::locate(&cli.profile)?;
            let identity = Identity::generate();
            let lock = if *passphrase {
                Some(new_passphrase()?)
            } else {
                None
            };
            profile.create_identity(
                &identity,
                lock.as_ref().map(|p| (p, KdfParams::INTERACTIVE)),
            )?;
            if lock.is_some() {
                // The database is locked with the same passphrase.
                create_store(&profile, lock.as_ref())?;
            }
            let id = identity.kith_id();
            if cli.json {
                print_json(out, &id_json(&id, Some(&profile), Some(&identity)))?;
            } else {
                writeln!(
                    out,
                    "Created a new identity in profile '{}'.",
                    profile.name()
                )?;
                writeln!(out, "Your Kith ID: {id}")?;
                writeln!(
                    out,
                    "Share it as text, as the link {}, or as a QR code (kith id show --qr).",
                    id.to_uri()
                )?;
            }
        }
        IdCommand::Show { qr, png, svg } => {
            let profile = Profile::locate(&cli.profile)?;
            let identity = profile.load_identity(passphrase_for(&profile)?.as_ref())?;
            let id = identity.kith_id();
            if let Some(path) = png {
                write_file(path, &qr::to_png(&id, 512)?)?;
            }
            if let Some(path) = svg {
                write_file(path, qr::to_svg(&id, 512)?.as_bytes())?;
            }
            if cli.json {
                let mut value = id_json(&id, Some(&profile), Some(&identity));
                if *qr {
                    value["qr"] = qr::to_terminal(&id)?.into();
                }
                print_json(out, &value)?;
            } else {
                if *qr {
                    write!(out, "{}", qr::to_terminal(&id)?)?;
                    writeln!(out)?;
                }
                writeln!(out, "{id}")?;
                if *qr {
                    writeln!(out, "{}", id.to_uri())?;
                }
            }
            crate::terminal::expect_requests(&profile);
        }
        IdCommand::Check { id, image } => {
            let parsed = match (id, image) {
                (_, Some(path)) => {
                    let bytes = read_image_file(path)?;
                    qr::read_image(&bytes).map_err(|source| CliError::QrImage {
                        path: path.clone(),
                        source,
                    })?
                }
                (Some(text), None) => KithId::parse(text)?,
                (None, None) => KithId::parse("")?,
            };
            if cli.json {
                let mut value = id_json(&parsed, None, None);
                value["valid"] = true.into();
                print_json(out, &value)?;
            } else {
                writeln!(out, "valid Kith ID")?;
                writeln!(out, "account key: {}", parsed.account().to_hex())?;
                writeln!(out, "nospam: {}", parsed.nospam())?;
            }
        }
    }
    Ok(())
}

fn id_json(id: &KithId, profile: Option<&Profile>, identity: Option<&Identity>) -> Value {
    let mut value = json!({
        "id": id.to_string(),
        "uri": id.to_uri(),
        "account_key": id.account().to_hex(),
        "nospam": id.nospam().to_string(),
    });
    if let Some(profile) = profile {
        value["profile"] = profile.name().into();
    }
    if let Some(identity) = identity {
        value["device"] = identity.device.peer_id().to_string().into();
    }
    value
}

pub(crate) fn print_json(out: &mut impl Write, value: &Value) -> Result<(), CliError> {
    writeln!(out, "{value}")?;
    Ok(())
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a QR picture through the store's bounded reader; a file over the
/// limit is refused unread with the QR reader's own error.
pub(crate) fn read_image_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let max = u64::try_from(qr::MAX_IMAGE_BYTES).unwrap_or(u64::MAX);
    private::read_limited(path, max).map_err(|e| match e {
        PrivateFileError::TooLarge { found, .. } => CliError::QrImage {
            path: path.to_path_buf(),
            source: qr::ReadError::FileTooLarge {
                found: usize::try_from(found).unwrap_or(usize::MAX),
                max: qr::MAX_IMAGE_BYTES,
            },
        },
        PrivateFileError::Io { source, .. } => CliError::File {
            path: path.to_path_buf(),
            source,
        },
        other => CliError::File {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kith").chain(args.iter().copied()))
    }

    #[test]
    fn device_link_takes_its_flags_and_the_global_ones() {
        let cli = parse(&[
            "--profile",
            "desktop",
            "device",
            "link",
            "--yes",
            "--passphrase",
            "--png",
            "code.png",
            "--json",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .unwrap();
        assert_eq!(cli.profile, "desktop");
        assert!(cli.json);
        let Some(Command::Device(DeviceCommand::Link {
            passphrase,
            png,
            yes,
        })) = cli.command
        else {
            panic!("{:?}", cli.command);
        };
        assert!(passphrase && yes);
        assert_eq!(png, Some(PathBuf::from("code.png")));
        let plain = parse(&["device", "link"]).unwrap();
        assert!(matches!(
            plain.command,
            Some(Command::Device(DeviceCommand::Link {
                passphrase: false,
                png: None,
                yes: false
            }))
        ));
    }

    #[test]
    fn only_the_window_daemon_and_chat_run_until_stopped() {
        for args in [
            &[][..],
            &["daemon"],
            &["daemon", "--volunteer"],
            &["chat", "bob"],
        ] {
            assert!(parse(args).unwrap().runs_until_stopped(), "{args:?}");
        }
        for args in [
            &["id", "show"][..],
            &["friends"],
            &["send", "bob", "hi"],
            &["status"],
        ] {
            assert!(!parse(args).unwrap().runs_until_stopped(), "{args:?}");
        }
    }

    #[test]
    fn device_add_takes_a_code_or_a_picture_but_not_both() {
        let cli = parse(&["device", "add", "kith-link:ABC", "--name", "desktop"]).unwrap();
        let Some(Command::Device(DeviceCommand::Add { code, image, name })) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(code.as_deref(), Some("kith-link:ABC"));
        assert_eq!(image, None);
        assert_eq!(name.as_deref(), Some("desktop"));

        let cli = parse(&["device", "add", "--image", "qr.png"]).unwrap();
        let Some(Command::Device(DeviceCommand::Add { code, image, name })) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!((code, name), (None, None));
        assert_eq!(image, Some(PathBuf::from("qr.png")));

        assert!(parse(&["device", "add"]).is_err());
        assert!(parse(&["device", "add", "kith-link:ABC", "--image", "qr.png"]).is_err());
        assert!(parse(&["device", "list", "extra"]).is_err());
        assert!(matches!(
            parse(&["device", "list"]).unwrap().command,
            Some(Command::Device(DeviceCommand::List))
        ));
    }

    #[test]
    fn device_remove_takes_exactly_one_device() {
        let cli = parse(&["--profile", "laptop", "device", "remove", "desktop"]).unwrap();
        let Some(Command::Device(DeviceCommand::Remove { device })) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(device, "desktop");
        assert!(parse(&["device", "remove"]).is_err());
        assert!(parse(&["device", "remove", "desktop", "laptop"]).is_err());
    }
}
