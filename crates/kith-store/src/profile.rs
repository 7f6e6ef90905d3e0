//! Profile folders and the identity file inside each.
//!
//! A profile is one folder: `$KITH_HOME/profiles/<name>/` when `KITH_HOME`
//! is set (tests and portable installs use it), otherwise under the
//! platform's data folder (`~/.local/share/kith/profiles/<name>/` on Linux,
//! per the `directories` crate). Folders are created 0700.
//!
//! `identity.key` holds the account secret key, the current nospam and the
//! device keypair, as a postcard body:
//!
//! ```text
//! body = postcard { account secret [32], nospam [4], device key (libp2p protobuf) }
//! ```
//!
//! Without a passphrase the file is format 1, the body in the clear:
//!
//! ```text
//! "KITH-IDENTITY\n" (14) | 0x01 | body
//! ```
//!
//! With one it is format 2, the body sealed under a key derived from the
//! passphrase (Argon2id, then XChaCha20-Poly1305 with the whole header as
//! associated data, so no header field can be changed without the file
//! failing to open), followed by a checksum that tells a damaged file from a
//! wrong passphrase before any key is derived:
//!
//! ```text
//! header = "KITH-IDENTITY\n" (14) | 0x02 | memory KiB (4, BE) | passes (4, BE) | lanes (4, BE) | salt (16) | nonce (24)
//! file   = header | XChaCha20-Poly1305(key, nonce, body, aad = header) | SHA-256(everything before)[..16]
//! ```
//!
//! Argon2 parameters read from a file are bounded (at most 1 GiB, 16
//! passes, 16 lanes) before anything is allocated for them.
//!
//! A new identity is written with [`private::create_new`]: 0600, atomically
//! and only if absent, so a crash or a second `kith id new` never leaves a
//! half-written or replaced key. Deliberate changes (a new nospam, setting,
//! changing or removing the passphrase) go through
//! [`Profile::replace_identity`] and [`private::replace`], which renames a
//! complete new file over the old one: after a crash there is either the old
//! file or the new one.
//!
//! The engine's database lives beside it in `db/` (see `docs/storage.md`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::private::{self, PrivateFileError};
use crate::seal::{Cipher, DeriveError, NONCE_LEN, SALT_LEN, TAG_LEN};
use crate::store::{KdfParams, MAX_PASSPHRASE_BYTES, Passphrase};
use kith_proto::{AccountKeypair, DeviceKeypair, KithId, Nospam, random_bytes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Environment variable that overrides the base folder of all profiles.
pub const KITH_HOME: &str = "KITH_HOME";
/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";
/// Longest profile name.
pub const MAX_PROFILE_NAME: usize = 64;

const IDENTITY_FILE: &str = "identity.key";
/// The identity under a new passphrase while the passphrase changes
/// ([`Profile::stage_identity`]).
const STAGED_FILE: &str = "identity.key.next";
const MAGIC: &[u8] = b"KITH-IDENTITY\n";
/// Format 1: the body in the clear.
const FORMAT_PLAIN: u8 = 1;
/// Format 2: the body sealed under a passphrase.
const FORMAT_SEALED: u8 = 2;
/// The newest format this build reads.
const NEWEST_FORMAT: u8 = FORMAT_SEALED;
/// Magic and format byte.
const PREFIX_LEN: usize = MAGIC.len() + 1;
/// Prefix, three u32 Argon2 parameters, salt and nonce.
const SEALED_HEADER_LEN: usize = PREFIX_LEN + 12 + SALT_LEN + NONCE_LEN;
/// Truncated SHA-256 at the end of a sealed file.
const CHECKSUM_LEN: usize = 16;
/// No valid identity file comes near this size; larger files are refused
/// unread.
const MAX_IDENTITY_FILE: u64 = 4096;
/// What [`ProfileError::AlreadyExists`] shows for an identity that is
/// locked.
const LOCKED_ID: &str = "locked";

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
        /// Its existing ID, or `locked` if it is sealed with a passphrase.
        id: String,
    },
    /// The identity is sealed with a passphrase and none was given.
    #[error("profile '{profile}' is locked: give its passphrase (KITH_PASSPHRASE or the prompt)")]
    Locked {
        /// The profile.
        profile: String,
    },
    /// The passphrase does not open the identity. Nothing was changed.
    #[error("wrong passphrase for profile '{profile}'")]
    WrongPassphrase {
        /// The profile.
        profile: String,
    },
    /// The passphrase is longer than [`MAX_PASSPHRASE_BYTES`].
    #[error("the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")]
    PassphraseTooLong,
    /// Argon2 parameters given for a new lock are out of bounds.
    #[error("these key derivation parameters are not accepted: {reason}")]
    UnsupportedKdfParams {
        /// What is wrong with them.
        reason: String,
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
///
/// Cloning copies the secret keys; every copy wipes them when dropped.
#[derive(Debug)]
pub struct Identity {
    /// The account key.
    pub account: AccountKeypair,
    /// The nospam of the current Kith ID.
    pub nospam: Nospam,
    /// This device's key.
    pub device: DeviceKeypair,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            // The intermediate secret bytes wipe themselves.
            account: AccountKeypair::from_secret_bytes(&self.account.secret_bytes()),
            nospam: self.nospam,
            device: self.device.clone(),
        }
    }
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

    /// Whether the identity is sealed with a passphrase. Reads only the
    /// start of the file, so a damaged sealed file still reports `true`
    /// here and is refused by [`Self::load_identity`].
    pub fn is_locked(&self) -> Result<bool, ProfileError> {
        let path = self.identity_path();
        let io = |source| {
            ProfileError::File(PrivateFileError::Io {
                path: path.clone(),
                source,
            })
        };
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.no_identity());
            }
            Err(e) => return Err(io(e)),
        };
        let found = file.metadata().map_err(io)?.len();
        if found > MAX_IDENTITY_FILE {
            return Err(too_large(path.clone(), found));
        }
        let mut prefix = Vec::with_capacity(PREFIX_LEN);
        file.take(PREFIX_LEN as u64)
            .read_to_end(&mut prefix)
            .map_err(io)?;
        match read_prefix(&prefix) {
            Ok((format, _)) => Ok(format == FORMAT_SEALED),
            Err(e) => Err(self.decode_error(path.clone(), e)),
        }
    }

    /// Reads the profile's identity, opening it with `passphrase` if it is
    /// sealed ([`ProfileError::Locked`] without one,
    /// [`ProfileError::WrongPassphrase`] if it does not open it). A
    /// passphrase given for an identity that is not sealed is ignored.
    /// Never changes the file.
    pub fn load_identity(&self, passphrase: Option<&Passphrase>) -> Result<Identity, ProfileError> {
        let path = self.identity_path();
        let bytes = Zeroizing::new(match private::read_limited(&path, MAX_IDENTITY_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Err(self.no_identity()),
            Err(PrivateFileError::TooLarge { found, .. }) => return Err(too_large(path, found)),
            Err(e) => return Err(e.into()),
        });
        decode_identity(&bytes, passphrase).map_err(|e| self.decode_error(path, e))
    }

    /// Writes `identity` as the profile's identity, creating the folder if
    /// needed, sealed under `lock`'s passphrase if given (format 2) or in
    /// the clear (format 1); refuses if the profile already has one.
    pub fn create_identity(
        &self,
        identity: &Identity,
        lock: Option<(&Passphrase, KdfParams)>,
    ) -> Result<(), ProfileError> {
        if let Some(id) = self.existing_id()? {
            return Err(self.already_exists(id));
        }
        let path = self.identity_path();
        let bytes = encode_identity(identity, lock, &path)?;
        private::create_dir(&self.dir)?;
        match private::create_new(&path, &bytes) {
            Ok(()) => Ok(()),
            // Another process created it in the meantime: report theirs.
            Err(PrivateFileError::AlreadyExists { .. }) => {
                let id = self.existing_id()?.unwrap_or_else(|| LOCKED_ID.into());
                Err(self.already_exists(id))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Atomically replaces the profile's identity with `identity`, sealed
    /// under `lock`'s passphrase if given, in the clear otherwise: for a
    /// new nospam, and to set, change or remove the passphrase. After a
    /// crash or failure the file is either the old one or the new one.
    ///
    /// The profile must already have an identity in a format this build
    /// reads; the caller is expected to have loaded it, as the old file is
    /// not opened again (its passphrase is not needed here).
    pub fn replace_identity(
        &self,
        identity: &Identity,
        lock: Option<(&Passphrase, KdfParams)>,
    ) -> Result<(), ProfileError> {
        self.is_locked()?;
        let path = self.identity_path();
        let bytes = encode_identity(identity, lock, &path)?;
        private::replace(&path, &bytes)?;
        Ok(())
    }

    /// First step of changing the passphrase: writes `identity`, sealed
    /// under `lock` (or in the clear), beside the identity file as
    /// `identity.key.next`. The database is re-keyed next, then
    /// [`Profile::commit_staged`] puts the staged file in place. After a
    /// crash in between, [`Profile::load_staged`] finds it: whichever
    /// passphrase opens the database decides which file is right.
    pub fn stage_identity(
        &self,
        identity: &Identity,
        lock: Option<(&Passphrase, KdfParams)>,
    ) -> Result<(), ProfileError> {
        let path = self.dir.join(STAGED_FILE);
        let bytes = encode_identity(identity, lock, &path)?;
        private::replace(&path, &bytes)?;
        Ok(())
    }

    /// The staged identity, opened with `passphrase`, if a change of
    /// passphrase left one.
    pub fn load_staged(
        &self,
        passphrase: Option<&Passphrase>,
    ) -> Result<Option<Identity>, ProfileError> {
        let path = self.dir.join(STAGED_FILE);
        let bytes = match private::read_limited(&path, MAX_IDENTITY_FILE) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.is_not_found() => return Ok(None),
            Err(PrivateFileError::TooLarge { found, .. }) => return Err(too_large(path, found)),
            Err(e) => return Err(e.into()),
        };
        decode_identity(&bytes, passphrase)
            .map(Some)
            .map_err(|e| self.decode_error(path, e))
    }

    /// Whether a change of passphrase left a staged identity.
    pub fn has_staged(&self) -> bool {
        self.dir.join(STAGED_FILE).exists()
    }

    /// Last step of changing the passphrase: the staged identity replaces
    /// the identity file, atomically.
    pub fn commit_staged(&self) -> Result<(), ProfileError> {
        private::rename(&self.dir.join(STAGED_FILE), &self.identity_path())?;
        Ok(())
    }

    /// Drops a staged identity (the change did not reach the database).
    pub fn discard_staged(&self) -> Result<(), ProfileError> {
        match fs::remove_file(self.dir.join(STAGED_FILE)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ProfileError::File(PrivateFileError::Io {
                path: self.dir.join(STAGED_FILE),
                source,
            })),
        }
    }

    /// The Kith ID of the existing identity (`locked` if sealed), or `None`
    /// if there is none.
    fn existing_id(&self) -> Result<Option<String>, ProfileError> {
        match self.load_identity(None) {
            Ok(existing) => Ok(Some(existing.kith_id().to_string())),
            Err(ProfileError::Locked { .. }) => Ok(Some(LOCKED_ID.into())),
            Err(ProfileError::NoIdentity { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    fn already_exists(&self, id: String) -> ProfileError {
        ProfileError::AlreadyExists {
            profile: self.name.clone(),
            id,
        }
    }

    fn no_identity(&self) -> ProfileError {
        ProfileError::NoIdentity {
            profile: self.name.clone(),
        }
    }

    fn decode_error(&self, path: PathBuf, e: DecodeIdentity) -> ProfileError {
        let profile = self.name.clone();
        match e {
            DecodeIdentity::Newer(found) => ProfileError::NewerFormat { path, found },
            DecodeIdentity::Corrupt(reason) => ProfileError::Corrupt { path, reason },
            DecodeIdentity::Locked => ProfileError::Locked { profile },
            DecodeIdentity::WrongPassphrase => ProfileError::WrongPassphrase { profile },
            DecodeIdentity::PassphraseTooLong => ProfileError::PassphraseTooLong,
        }
    }
}

fn too_large(path: PathBuf, found: u64) -> ProfileError {
    ProfileError::Corrupt {
        path,
        reason: format!("{found} bytes is far too large"),
    }
}

enum DecodeIdentity {
    Newer(u8),
    Corrupt(String),
    Locked,
    WrongPassphrase,
    PassphraseTooLong,
}

/// The header of a sealed (format 2) file.
struct SealedHeader {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

impl SealedHeader {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEALED_HEADER_LEN);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_SEALED);
        out.extend_from_slice(&self.params.memory_kib.to_be_bytes());
        out.extend_from_slice(&self.params.iterations.to_be_bytes());
        out.extend_from_slice(&self.params.parallelism.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce);
        out
    }

    /// Reads the header from its bytes (prefix already checked).
    fn parse(header: &[u8; SEALED_HEADER_LEN]) -> Self {
        let u32_at = |at: usize| {
            u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let salt_at = PREFIX_LEN + 12;
        let nonce_at = salt_at + SALT_LEN;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&header[salt_at..nonce_at]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[nonce_at..]);
        Self {
            params: KdfParams {
                memory_kib: u32_at(PREFIX_LEN),
                iterations: u32_at(PREFIX_LEN + 4),
                parallelism: u32_at(PREFIX_LEN + 8),
            },
            salt,
            nonce,
        }
    }
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let full = Sha256::digest(bytes);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&full[..CHECKSUM_LEN]);
    out
}

fn encode_identity(
    identity: &Identity,
    lock: Option<(&Passphrase, KdfParams)>,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, ProfileError> {
    let failed = |reason: String| ProfileError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let device_key = identity
        .device
        .to_protobuf()
        .map_err(|e| failed(e.to_string()))?;
    let record = Zeroizing::new(IdentityFileV1 {
        account_secret: *identity.account.secret_bytes(),
        nospam: identity.nospam.0,
        device_key: device_key.to_vec(),
    });
    let body = Zeroizing::new(postcard::to_allocvec(&*record).map_err(|e| failed(e.to_string()))?);
    let Some((passphrase, params)) = lock else {
        let mut out = Zeroizing::new(Vec::with_capacity(PREFIX_LEN + body.len()));
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_PLAIN);
        out.extend_from_slice(&body);
        return Ok(out);
    };
    let header = SealedHeader {
        params,
        salt: random_bytes::<SALT_LEN>(),
        nonce: random_bytes::<NONCE_LEN>(),
    };
    let cipher = Cipher::derive(passphrase, &header.salt, params).map_err(|e| match e {
        DeriveError::PassphraseTooLong => ProfileError::PassphraseTooLong,
        DeriveError::Params(reason) | DeriveError::Argon2(reason) => {
            ProfileError::UnsupportedKdfParams { reason }
        }
    })?;
    let mut out = Zeroizing::new(header.to_bytes());
    let sealed = cipher
        .seal(&header.nonce, &out, &body)
        .ok_or_else(|| failed("sealing failed".into()))?;
    out.extend_from_slice(&sealed);
    let check = checksum(&out);
    out.extend_from_slice(&check);
    Ok(out)
}

/// Checks the magic and returns the format byte and what follows it.
fn read_prefix(bytes: &[u8]) -> Result<(u8, &[u8]), DecodeIdentity> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| DecodeIdentity::Corrupt("missing header".into()))?;
    let (&format, rest) = rest
        .split_first()
        .ok_or_else(|| DecodeIdentity::Corrupt("truncated header".into()))?;
    match format {
        FORMAT_PLAIN | FORMAT_SEALED => Ok((format, rest)),
        newer if newer > NEWEST_FORMAT => Err(DecodeIdentity::Newer(newer)),
        unknown => Err(DecodeIdentity::Corrupt(format!("unknown format {unknown}"))),
    }
}

fn decode_identity(
    bytes: &[u8],
    passphrase: Option<&Passphrase>,
) -> Result<Identity, DecodeIdentity> {
    match read_prefix(bytes)? {
        (FORMAT_PLAIN, body) => decode_body(body),
        _ => decode_sealed(bytes, passphrase),
    }
}

fn decode_sealed(
    bytes: &[u8],
    passphrase: Option<&Passphrase>,
) -> Result<Identity, DecodeIdentity> {
    let corrupt = |reason: &str| DecodeIdentity::Corrupt(reason.into());
    if bytes.len() < SEALED_HEADER_LEN + TAG_LEN + CHECKSUM_LEN {
        return Err(corrupt("truncated"));
    }
    let (covered, check) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if checksum(covered) != check {
        return Err(corrupt("checksum mismatch: the file is damaged"));
    }
    let (header_bytes, sealed) = covered
        .split_first_chunk::<SEALED_HEADER_LEN>()
        .ok_or_else(|| corrupt("truncated"))?;
    let header = SealedHeader::parse(header_bytes);
    header
        .params
        .check()
        .map_err(|e| DecodeIdentity::Corrupt(format!("key derivation parameters: {e}")))?;
    let passphrase = passphrase.ok_or(DecodeIdentity::Locked)?;
    let cipher = Cipher::derive(passphrase, &header.salt, header.params).map_err(|e| match e {
        DeriveError::PassphraseTooLong => DecodeIdentity::PassphraseTooLong,
        DeriveError::Params(e) | DeriveError::Argon2(e) => {
            DecodeIdentity::Corrupt(format!("key derivation: {e}"))
        }
    })?;
    let body = Zeroizing::new(
        cipher
            .open(&header.nonce, header_bytes, sealed)
            .ok_or(DecodeIdentity::WrongPassphrase)?,
    );
    decode_body(&body)
}

fn decode_body(body: &[u8]) -> Result<Identity, DecodeIdentity> {
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

    fn alice(base: &tempfile::TempDir) -> Profile {
        Profile::in_base(base.path(), "alice").unwrap()
    }

    fn pass() -> Passphrase {
        Passphrase::new("correct horse battery staple")
    }

    fn lock(passphrase: &Passphrase) -> Option<(&Passphrase, KdfParams)> {
        Some((passphrase, KdfParams::TESTING))
    }

    fn same(a: &Identity, b: &Identity) -> bool {
        a.kith_id() == b.kith_id()
            && a.device.peer_id() == b.device.peer_id()
            && *a.account.secret_bytes() == *b.account.secret_bytes()
    }

    fn entries(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn identity_survives_a_round_trip_through_disk() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let identity = Identity::generate();
        profile.create_identity(&identity, None).unwrap();
        assert!(!profile.is_locked().unwrap());
        assert!(same(&profile.load_identity(None).unwrap(), &identity));
        // A passphrase for an identity that has none is ignored.
        assert!(same(
            &profile.load_identity(Some(&pass())).unwrap(),
            &identity
        ));
    }

    #[test]
    fn a_locked_identity_survives_a_round_trip_and_hides_its_secrets() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let identity = Identity::generate();
        let pass = pass();
        profile.create_identity(&identity, lock(&pass)).unwrap();
        assert!(profile.is_locked().unwrap());
        assert!(same(
            &profile.load_identity(Some(&pass)).unwrap(),
            &identity
        ));
        let bytes = fs::read(profile.identity_path()).unwrap();
        assert_eq!(bytes[MAGIC.len()], FORMAT_SEALED);
        let secret = identity.account.secret_bytes();
        assert!(!bytes.windows(32).any(|w| w == secret.as_slice()));
        let device = identity.device.to_protobuf().unwrap();
        assert!(!bytes.windows(device.len()).any(|w| w == device.as_slice()));
    }

    #[test]
    fn locked_identity_needs_the_right_passphrase_and_failures_change_nothing() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let pass = pass();
        profile
            .create_identity(&Identity::generate(), lock(&pass))
            .unwrap();
        let before = fs::read(profile.identity_path()).unwrap();

        let err = profile.load_identity(None).unwrap_err();
        assert!(matches!(err, ProfileError::Locked { ref profile } if profile == "alice"));
        assert_eq!(
            err.to_string(),
            "profile 'alice' is locked: give its passphrase (KITH_PASSPHRASE or the prompt)"
        );
        assert!(matches!(
            profile.load_identity(Some(&Passphrase::new("correct horse battery stapler"))),
            Err(ProfileError::WrongPassphrase { ref profile }) if profile == "alice"
        ));
        assert!(matches!(
            profile.load_identity(Some(&Passphrase::new(""))),
            Err(ProfileError::WrongPassphrase { .. })
        ));
        assert!(matches!(
            profile.load_identity(Some(&Passphrase::new("x".repeat(MAX_PASSPHRASE_BYTES + 1)))),
            Err(ProfileError::PassphraseTooLong)
        ));
        assert_eq!(fs::read(profile.identity_path()).unwrap(), before);
        assert_eq!(entries(profile.dir()), 1);
    }

    #[test]
    fn a_second_identity_is_refused_and_the_first_kept() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let first = Identity::generate();
        profile.create_identity(&first, None).unwrap();
        let err = profile
            .create_identity(&Identity::generate(), None)
            .unwrap_err();
        assert!(
            matches!(err, ProfileError::AlreadyExists { ref id, .. } if *id == first.kith_id().to_string()),
            "{err}"
        );
        assert!(same(&profile.load_identity(None).unwrap(), &first));
        // No temporary files are left behind.
        assert_eq!(entries(profile.dir()), 1);
    }

    #[test]
    fn a_second_identity_is_refused_over_a_locked_one() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let pass = pass();
        profile
            .create_identity(&Identity::generate(), lock(&pass))
            .unwrap();
        let before = fs::read(profile.identity_path()).unwrap();
        for new_lock in [None, lock(&pass)] {
            let err = profile
                .create_identity(&Identity::generate(), new_lock)
                .unwrap_err();
            assert!(
                matches!(err, ProfileError::AlreadyExists { ref id, .. } if id == LOCKED_ID),
                "{err}"
            );
        }
        assert_eq!(fs::read(profile.identity_path()).unwrap(), before);
    }

    #[test]
    fn bad_lock_settings_are_refused_before_anything_is_written() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let long = Passphrase::new("x".repeat(MAX_PASSPHRASE_BYTES + 1));
        assert!(matches!(
            profile.create_identity(&Identity::generate(), lock(&long)),
            Err(ProfileError::PassphraseTooLong)
        ));
        let absurd = KdfParams {
            memory_kib: u32::MAX,
            ..KdfParams::TESTING
        };
        assert!(matches!(
            profile.create_identity(&Identity::generate(), Some((&pass(), absurd))),
            Err(ProfileError::UnsupportedKdfParams { .. })
        ));
        assert!(!profile.dir().exists());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_and_folder_are_private() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        profile
            .create_identity(&Identity::generate(), None)
            .unwrap();
        assert_eq!(mode(&profile.identity_path()), 0o600);
        assert_eq!(mode(profile.dir()), 0o700);

        let locked = Profile::in_base(base.path(), "bob").unwrap();
        locked
            .create_identity(&Identity::generate(), lock(&pass()))
            .unwrap();
        assert_eq!(mode(&locked.identity_path()), 0o600);
    }

    #[test]
    fn replace_rotates_nospam_and_sets_changes_and_removes_the_passphrase() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let mut identity = Identity::generate();
        profile.create_identity(&identity, None).unwrap();

        identity.nospam = Nospam::random();
        profile.replace_identity(&identity, None).unwrap();
        assert!(same(&profile.load_identity(None).unwrap(), &identity));

        let first = pass();
        profile.replace_identity(&identity, lock(&first)).unwrap();
        assert!(profile.is_locked().unwrap());
        assert!(same(
            &profile.load_identity(Some(&first)).unwrap(),
            &identity
        ));

        let second = Passphrase::new("another one");
        profile.replace_identity(&identity, lock(&second)).unwrap();
        assert!(matches!(
            profile.load_identity(Some(&first)),
            Err(ProfileError::WrongPassphrase { .. })
        ));
        assert!(same(
            &profile.load_identity(Some(&second)).unwrap(),
            &identity
        ));

        profile.replace_identity(&identity, None).unwrap();
        assert!(!profile.is_locked().unwrap());
        assert!(same(&profile.load_identity(None).unwrap(), &identity));
        assert_eq!(entries(profile.dir()), 1, "no temporary left");
        #[cfg(unix)]
        assert_eq!(mode(&profile.identity_path()), 0o600);
    }

    #[test]
    fn replace_needs_an_existing_identity_and_keeps_it_when_refused() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        assert!(matches!(
            profile.replace_identity(&Identity::generate(), None),
            Err(ProfileError::NoIdentity { .. })
        ));
        assert!(!profile.identity_path().exists());

        profile
            .create_identity(&Identity::generate(), None)
            .unwrap();
        let before = fs::read(profile.identity_path()).unwrap();
        let absurd = KdfParams {
            iterations: 1000,
            ..KdfParams::TESTING
        };
        assert!(matches!(
            profile.replace_identity(&Identity::generate(), Some((&pass(), absurd))),
            Err(ProfileError::UnsupportedKdfParams { .. })
        ));
        assert_eq!(fs::read(profile.identity_path()).unwrap(), before);

        // A file from a newer Kith is never overwritten.
        let mut newer = before.clone();
        newer[MAGIC.len()] = 9;
        fs::write(profile.identity_path(), &newer).unwrap();
        assert!(matches!(
            profile.replace_identity(&Identity::generate(), None),
            Err(ProfileError::NewerFormat { found: 9, .. })
        ));
        assert_eq!(fs::read(profile.identity_path()).unwrap(), newer);
    }

    #[cfg(unix)]
    #[test]
    fn replace_in_a_read_only_folder_fails_and_keeps_the_old_file() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        profile
            .create_identity(&Identity::generate(), None)
            .unwrap();
        let before = fs::read(profile.identity_path()).unwrap();
        fs::set_permissions(profile.dir(), fs::Permissions::from_mode(0o500)).unwrap();
        // Permissions do not stop root; there the failure paths are covered
        // by private::tests::replace_swaps_the_whole_file_or_nothing.
        let probe = profile.dir().join("probe");
        if fs::write(&probe, b"").is_ok() {
            fs::remove_file(&probe).unwrap();
        } else {
            let err = profile
                .replace_identity(&Identity::generate(), lock(&pass()))
                .unwrap_err();
            assert!(matches!(err, ProfileError::File(_)), "{err}");
            assert_eq!(fs::read(profile.identity_path()).unwrap(), before);
            assert_eq!(entries(profile.dir()), 1);
        }
        fs::set_permissions(profile.dir(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn damaged_files_get_typed_errors_and_stay_untouched() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        fs::create_dir_all(profile.dir()).unwrap();
        let path = profile.identity_path();
        let good = encode_identity(&Identity::generate(), None, &path).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            MAGIC.to_vec(),
            [MAGIC, &[0]].concat(),
            good[..good.len() - 3].to_vec(),
            [&good[..], b"x"].concat(),
            vec![0u8; 10_000],
        ];
        for bytes in cases {
            fs::write(&path, &bytes).unwrap();
            let err = profile.load_identity(None).unwrap_err();
            assert!(matches!(err, ProfileError::Corrupt { .. }), "{err}");
            assert!(matches!(
                profile.create_identity(&Identity::generate(), None),
                Err(ProfileError::Corrupt { .. })
            ));
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
        let mut newer = good.to_vec();
        newer[MAGIC.len()] = 9;
        fs::write(&path, &newer).unwrap();
        assert!(matches!(
            profile.load_identity(None),
            Err(ProfileError::NewerFormat { found: 9, .. })
        ));
        assert!(matches!(
            profile.is_locked(),
            Err(ProfileError::NewerFormat { found: 9, .. })
        ));
    }

    #[test]
    fn truncated_and_oversized_sealed_files_get_typed_errors() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let pass = pass();
        profile
            .create_identity(&Identity::generate(), lock(&pass))
            .unwrap();
        let path = profile.identity_path();
        let good = fs::read(&path).unwrap();
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            let err = profile.load_identity(Some(&pass)).unwrap_err();
            assert!(matches!(err, ProfileError::Corrupt { .. }), "{len}: {err}");
        }
        let oversized = [&good[..], &vec![0u8; MAX_IDENTITY_FILE as usize]].concat();
        fs::write(&path, &oversized).unwrap();
        assert!(matches!(
            profile.load_identity(Some(&pass)),
            Err(ProfileError::Corrupt { .. })
        ));
        assert!(matches!(
            profile.is_locked(),
            Err(ProfileError::Corrupt { .. })
        ));
    }

    #[test]
    fn any_damaged_byte_of_a_sealed_file_is_reported_as_damage() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let pass = pass();
        profile
            .create_identity(&Identity::generate(), lock(&pass))
            .unwrap();
        let path = profile.identity_path();
        let good = fs::read(&path).unwrap();
        for at in PREFIX_LEN..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            let err = profile.load_identity(Some(&pass)).unwrap_err();
            assert!(
                matches!(err, ProfileError::Corrupt { ref reason, .. } if reason.contains("checksum")),
                "byte {at}: {err}"
            );
            assert_eq!(fs::read(&path).unwrap(), bad);
        }
    }

    /// Changes a sealed file and fixes its checksum, as someone tampering on
    /// purpose would.
    fn tamper(good: &[u8], change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut bytes = good[..good.len() - CHECKSUM_LEN].to_vec();
        change(&mut bytes);
        let check = checksum(&bytes);
        bytes.extend_from_slice(&check);
        bytes
    }

    #[test]
    fn a_tampered_header_or_ciphertext_does_not_open() {
        let base = tempfile::tempdir().unwrap();
        let profile = alice(&base);
        let pass = pass();
        profile
            .create_identity(&Identity::generate(), lock(&pass))
            .unwrap();
        let path = profile.identity_path();
        let good = fs::read(&path).unwrap();
        let params_at = PREFIX_LEN;
        let salt_at = PREFIX_LEN + 12;
        let nonce_at = salt_at + SALT_LEN;
        let wrong: Vec<Vec<u8>> = vec![
            // Weaker-looking or different parameters.
            tamper(&good, |b| {
                b[params_at + 4..params_at + 8].copy_from_slice(&2u32.to_be_bytes())
            }),
            tamper(&good, |b| {
                b[params_at..params_at + 4].copy_from_slice(&128u32.to_be_bytes())
            }),
            tamper(&good, |b| b[salt_at] ^= 1),
            tamper(&good, |b| b[nonce_at] ^= 1),
            tamper(&good, |b| b[SEALED_HEADER_LEN] ^= 1),
            tamper(&good, |b| {
                let last = b.len() - 1;
                b[last] ^= 1;
            }),
        ];
        for bytes in wrong {
            fs::write(&path, &bytes).unwrap();
            let err = profile.load_identity(Some(&pass)).unwrap_err();
            assert!(matches!(err, ProfileError::WrongPassphrase { .. }), "{err}");
        }
        // Absurd parameters are refused before anything is allocated.
        let absurd: Vec<Vec<u8>> = vec![
            tamper(&good, |b| {
                b[params_at..params_at + 4].copy_from_slice(&u32::MAX.to_be_bytes())
            }),
            tamper(&good, |b| {
                b[params_at + 4..params_at + 8].copy_from_slice(&u32::MAX.to_be_bytes())
            }),
            tamper(&good, |b| {
                b[params_at + 8..params_at + 12].copy_from_slice(&u32::MAX.to_be_bytes())
            }),
            tamper(&good, |b| {
                b[params_at + 4..params_at + 8].copy_from_slice(&[0; 4])
            }),
        ];
        for bytes in absurd {
            fs::write(&path, &bytes).unwrap();
            for result in [
                profile.load_identity(Some(&pass)),
                profile.load_identity(None),
            ] {
                let err = result.unwrap_err();
                assert!(
                    matches!(err, ProfileError::Corrupt { ref reason, .. } if reason.contains("key derivation")),
                    "{err}"
                );
            }
        }
        // A sealed body that is not an identity is damage, not a wrong
        // passphrase.
        let header = SealedHeader::parse(good[..SEALED_HEADER_LEN].try_into().unwrap());
        let cipher = Cipher::derive(&pass, &header.salt, header.params).unwrap();
        let mut bytes = header.to_bytes();
        let sealed = cipher
            .seal(&header.nonce, &bytes, b"not an identity")
            .unwrap();
        bytes.extend_from_slice(&sealed);
        bytes.extend_from_slice(&checksum(&bytes));
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            profile.load_identity(Some(&pass)),
            Err(ProfileError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_identity_clone_holds_the_same_keys() {
        let identity = Identity::generate();
        assert!(same(&identity.clone(), &identity));
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
