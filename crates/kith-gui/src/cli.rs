//! The `kith` command line.
//!
//! `kith id new|show|check` manage and inspect identities. Every command
//! takes `--profile NAME` (default `default`) and `--json` for scripts.
//! Output meant for people goes to standard output, errors to standard
//! error with a non-zero exit status.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use kith_proto::{KithId, KithIdError, qr};
use serde_json::{Value, json};

use kith_store::private::{self, PrivateFileError};
use kith_store::profile::{DEFAULT_PROFILE, Identity, Profile, ProfileError};

/// Kith: a peer-to-peer messenger with no server in the middle.
#[derive(Debug, Parser)]
#[command(name = "kith", version, about, long_about = None)]
#[command(arg_required_else_help = true)]
pub struct Cli {
    /// Profile to use: a separate identity, friends and history. Profiles
    /// live under $KITH_HOME/profiles/, or the platform data folder.
    #[arg(long, global = true, default_value = DEFAULT_PROFILE, value_name = "NAME")]
    pub profile: String,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, show and check Kith IDs.
    #[command(subcommand)]
    Id(IdCommand),
}

/// `kith id …`
#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// Create a new identity (account and device keys) in the profile.
    New,
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
}

/// Runs one command, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut impl Write) -> Result<(), CliError> {
    match &cli.command {
        Command::Id(command) => run_id(cli, command, out),
    }
}

fn run_id(cli: &Cli, command: &IdCommand, out: &mut impl Write) -> Result<(), CliError> {
    match command {
        IdCommand::New => {
            let profile = Profile::locate(&cli.profile)?;
            let identity = Identity::generate();
            profile.create_identity(&identity)?;
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
            let identity = profile.load_identity()?;
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

fn print_json(out: &mut impl Write, value: &Value) -> Result<(), CliError> {
    writeln!(out, "{value}")?;
    Ok(())
}

fn write_file(path: &PathBuf, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|source| CliError::File {
        path: path.clone(),
        source,
    })
}

/// Reads a QR picture through the store's bounded reader; a file over the
/// limit is refused unread with the QR reader's own error.
fn read_image_file(path: &Path) -> Result<Vec<u8>, CliError> {
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
