//! Profile folders and the identity file inside each.
//!
//! A profile is one folder: `$KITH_HOME/profiles/<name>/` when `KITH_HOME`
//! is set (tests and portable installs use it), otherwise under the
//! platform's data folder (`~/.local/share/kith/profiles/<name>/` on Linux,
//! per the `directories` crate). Folders are created 0700.
//!
//! `identity.key` holds the account secret key, the current nospam and the
//! device keypair. Layout (version 1):
//!
//! ```text
//! "KITH-IDENTITY\n" (14) | version (1) | postcard { account secret [32], nospam [4], device key (libp2p protobuf) }
//! ```
//!
//! It is written with `kith_store::private`: 0600, atomically and only if
//! absent, so a crash or a second `kith id new` never leaves a half-written
//! or replaced key.
//!
//! The engine's database lives beside it in `db/` (see `docs/storage.md`).

use std::path::{Path, PathBuf};

use crate::private::{self, PrivateFileError};
use kith_proto::{AccountKeypair, DeviceKeypair, KithId, Nospam};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// Environment variable that overrides the base folder of all profiles.
pub const KITH_HOME: &str = "KITH_HOME";
/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";
/// Longest profile name.
pub const MAX_PROFILE_NAME: usize = 64;

const IDENTITY_FILE: &str = "identity.key";
const MAGIC: &[u8] = b"KITH-IDENTITY\n";
const IDENTITY_FORMAT: u8 = 1;
/// No valid identity file comes near this size; larger files are refused
/// unread.
const MAX_IDENTITY_FILE: u64 = 4096;

/// Why a profile could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The profile name has characters that do not belong in a folder name.
    #[error(
        "profile name '{0}' is not allowed: use 1 to {MAX_PROFILE_NAME} letters, digits, '-' or '_'"
    )]
    InvalidName(String),
    /// Neither `KITH_HOME` nor a platform data folder is available.
    #[error("no folder for Kith's data: set {KITH_HOME} to choose one")]
    NoDataDir,
    /// The profile has no identity yet.
    #[error("profile '{profile}' has no identity yet: create one with `kith id new`")]
    NoIdentity {
        /// The profile.
        profile: String,
    },
    /// `kith id new` on a profile that already has one.
    #[error("profile '{profile}' already has an identity ({id}); use --profile to create another")]
    AlreadyExists {
        /// The profile.
        profile: String,
        /// Its existing ID.
        id: String,
    },
    /// A file or folder could not be read or written.
    #[error(transparent)]
    File(#[from] PrivateFileError),
    /// The identity file exists but is not one Kith wrote.
    #[error("{}: not a valid Kith identity file ({reason}); it was left untouched", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An identity file from a newer Kith.
    #[error("{}: identity format {found} is newer than this Kith understands; update Kith", path.display())]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u8,
    },
}

/// The identity of a profile: who the person is and which device this is.
#[derive(Debug)]
pub struct Identity {
    /// The account key.
    pub account: AccountKeypair,
    /// The nospam of the current Kith ID.
    pub nospam: Nospam,
    /// This device's key.
    pub device: DeviceKeypair,
}

impl Identity {
    /// A brand-new account on a brand-new device.
    pub fn generate() -> Self {
        Self {
            account: AccountKeypair::generate(),
            nospam: Nospam::random(),
            device: DeviceKeypair::generate(),
        }
    }

    /// The Kith ID to share.
    pub fn kith_id(&self) -> KithId {
        KithId::new(self.account.public(), self.nospam)
    }
}

#[derive(Serialize, Deserialize, Zeroize)]
struct IdentityFileV1 {
    account_secret: [u8; 32],
    nospam: [u8; 4],
    device_key: Vec<u8>,
}

/// One profile folder.
#[derive(Debug, Clone)]
pub struct Profile {
    name: String,
    dir: PathBuf,
}

impl Profile {
    /// Finds the folder of profile `name`, from `KITH_HOME` if set,
    /// otherwise from the platform's data folder. Does not create it.
    pub fn locate(name: &str) -> Result<Self, ProfileError> {
        let base = match std::env::var_os(KITH_HOME) {
            Some(home) if !home.is_empty() => PathBuf::from(home),
            _ => directories::ProjectDirs::from("org", "Kith", "kith")
                .ok_or(ProfileError::NoDataDir)?
                .data_dir()
                .to_owned(),
        };
        Self::in_base(&base, name)
    }

    /// The folder of profile `name` under `base`.
    pub fn in_base(base: &Path, name: &str) -> Result<Self, ProfileError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_PROFILE_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(ProfileError::InvalidName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            dir: base.join("profiles").join(name),
        })
    }

    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The profile's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn identity_path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// Reads the profile's identity.
    pub fn load_identity(&self) -> Result<Identity, ProfileError> {
        let path = self.identity_path();
        let bytes = Zeroizing::new(match private::read_limited(&path, MAX_IDENTITY_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => {
                return Err(ProfileError::NoIdentity {
                    profile: self.name.clone(),
                });
            }
            Err(PrivateFileError::TooLarge { found, .. }) => {
                return Err(ProfileError::Corrupt {
                    path,
                    reason: format!("{found} bytes is far too large"),
                });
            }
            Err(e) => return Err(e.into()),
        });
        decode_identity(&bytes).map_err(|e| match e {
            DecodeIdentity::Newer(found) => ProfileError::NewerFormat {
                path: path.clone(),
                found,
            },
            DecodeIdentity::Corrupt(reason) => ProfileError::Corrupt {
                path: path.clone(),
                reason,
            },
        })
    }

    /// Writes `identity` as the profile's identity, creating the folder if
    /// needed; refuses if the profile already has one.
    pub fn create_identity(&self, identity: &Identity) -> Result<(), ProfileError> {
        match self.load_identity() {
            Ok(existing) => {
                return Err(ProfileError::AlreadyExists {
                    profile: self.name.clone(),
                    id: existing.kith_id().to_string(),
                });
            }
            Err(ProfileError::NoIdentity { .. }) => {}
            Err(other) => return Err(other),
        }
        private::create_dir(&self.dir)?;
        let bytes = encode_identity(identity)?;
        match private::create_new(&self.identity_path(), &bytes) {
            Ok(()) => Ok(()),
            // Another process created it in the meantime: report theirs.
            Err(PrivateFileError::AlreadyExists { .. }) => Err(ProfileError::AlreadyExists {
                profile: self.name.clone(),
                id: self.load_identity()?.kith_id().to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

enum DecodeIdentity {
    Newer(u8),
    Corrupt(String),
}

fn encode_identity(identity: &Identity) -> Result<Zeroizing<Vec<u8>>, ProfileError> {
    let device_key = identity
        .device
        .to_protobuf()
        .map_err(|e| ProfileError::Corrupt {
            path: PathBuf::from(IDENTITY_FILE),
            reason: e.to_string(),
        })?;
    let record = Zeroizing::new(IdentityFileV1 {
        account_secret: *identity.account.secret_bytes(),
        nospam: identity.nospam.0,
        device_key: device_key.to_vec(),
    });
    let body =
        Zeroizing::new(
            postcard::to_allocvec(&*record).map_err(|e| ProfileError::Corrupt {
                path: PathBuf::from(IDENTITY_FILE),
                reason: e.to_string(),
            })?,
        );
    let mut out = Zeroizing::new(Vec::with_capacity(MAGIC.len() + 1 + body.len()));
    out.extend_from_slice(MAGIC);
    out.push(IDENTITY_FORMAT);
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode_identity(bytes: &[u8]) -> Result<Identity, DecodeIdentity> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| DecodeIdentity::Corrupt("missing header".into()))?;
    let (&format, body) = rest
        .split_first()
        .ok_or_else(|| DecodeIdentity::Corrupt("truncated header".into()))?;
    if format > IDENTITY_FORMAT {
        return Err(DecodeIdentity::Newer(format));
    }
    if format != IDENTITY_FORMAT {
        return Err(DecodeIdentity::Corrupt(format!("unknown format {format}")));
    }
    let (record, trailing): (IdentityFileV1, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| DecodeIdentity::Corrupt(e.to_string()))?;
    let record = Zeroizing::new(record);
    if !trailing.is_empty() {
        return Err(DecodeIdentity::Corrupt("trailing bytes".into()));
    }
    let device = DeviceKeypair::from_protobuf(&record.device_key)
        .map_err(|e| DecodeIdentity::Corrupt(e.to_string()))?;
    Ok(Identity {
        account: AccountKeypair::from_secret_bytes(&record.account_secret),
        nospam: Nospam(record.nospam),
        device,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn identity_survives_a_round_trip_through_disk() {
        let base = tempfile::tempdir().unwrap();
        let profile = Profile::in_base(base.path(), "alice").unwrap();
        let identity = Identity::generate();
        profile.create_identity(&identity).unwrap();
        let loaded = profile.load_identity().unwrap();
        assert_eq!(loaded.kith_id(), identity.kith_id());
        assert_eq!(loaded.device.peer_id(), identity.device.peer_id());
    }

    #[test]
    fn a_second_identity_is_refused_and_the_first_kept() {
        let base = tempfile::tempdir().unwrap();
        let profile = Profile::in_base(base.path(), "alice").unwrap();
        let first = Identity::generate();
        profile.create_identity(&first).unwrap();
        let err = profile.create_identity(&Identity::generate()).unwrap_err();
        assert!(matches!(err, ProfileError::AlreadyExists { .. }), "{err}");
        assert_eq!(profile.load_identity().unwrap().kith_id(), first.kith_id());
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(profile.dir()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn key_file_and_folder_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let profile = Profile::in_base(base.path(), "alice").unwrap();
        profile.create_identity(&Identity::generate()).unwrap();
        let file_mode = fs::metadata(profile.identity_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = fs::metadata(profile.dir()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn damaged_files_get_typed_errors_and_stay_untouched() {
        let base = tempfile::tempdir().unwrap();
        let profile = Profile::in_base(base.path(), "alice").unwrap();
        fs::create_dir_all(profile.dir()).unwrap();
        let good = encode_identity(&Identity::generate()).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            good[..good.len() - 3].to_vec(),
            [&good[..], b"x"].concat(),
            vec![0u8; 10_000],
        ];
        for bytes in cases {
            fs::write(profile.identity_path(), &bytes).unwrap();
            let err = profile.load_identity().unwrap_err();
            assert!(matches!(err, ProfileError::Corrupt { .. }), "{err}");
            assert!(matches!(
                profile.create_identity(&Identity::generate()),
                Err(ProfileError::Corrupt { .. })
            ));
            assert_eq!(fs::read(profile.identity_path()).unwrap(), bytes);
        }
        let mut newer = good.to_vec();
        newer[MAGIC.len()] = 9;
        fs::write(profile.identity_path(), &newer).unwrap();
        assert!(matches!(
            profile.load_identity(),
            Err(ProfileError::NewerFormat { found: 9, .. })
        ));
    }

    #[test]
    fn profile_names_are_checked() {
        let base = Path::new("/nonexistent");
        for bad in ["", "../evil", "a/b", "sp ace", &"x".repeat(65)] {
            assert!(matches!(
                Profile::in_base(base, bad),
                Err(ProfileError::InvalidName(_))
            ));
        }
        assert!(Profile::in_base(base, "work-laptop_2").is_ok());
    }
}
