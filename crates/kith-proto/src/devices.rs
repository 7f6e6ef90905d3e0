//! The account's device list: which computers speak for a person, signed by
//! the account key.
//!
//! A [`DeviceList`] names the account's devices (1 to
//! [`MAX_LISTED_DEVICES`]) by their libp2p `PeerId`, with a name the person
//! chose and the time each was added, under a sequence number that only
//! grows. The account key signs it ([`DeviceList::sign`], domain tag
//! `kith/devices/v1/list`), giving a [`SignedDeviceList`] that anyone who
//! knows the account key can check ([`SignedDeviceList::verify`]).
//!
//! Data flows like this:
//!
//! 1. The first device signs a one-device list (sequence 1) when the account
//!    is made.
//! 2. Linking a device ([`crate::link`]): the existing device makes the next
//!    list with [`DeviceList::with`], signs it and hands it to the new device
//!    inside the link bundle. Removing one: [`DeviceList::without`].
//! 3. The list travels to friends (in the contact card and presence record;
//!    see `docs/devices.md`). A friend keeps the newest list it has verified
//!    ([`DeviceList::supersedes`]) and fans every message out to each listed
//!    device; a device left off the newest list receives nothing new.
//!
//! The encoding is strict and bounded: input over [`MAX_LIST_BYTES`] is
//! refused unread, integers are fixed-width big-endian, every length and
//! count is checked before the bytes behind it are looked for, trailing
//! bytes are refused, and every field rule (device count, unique and valid
//! Ed25519 `PeerId`s, one-line names) is enforced by the decoder as by the
//! signer, so decoding then encoding gives back the input. The byte layout
//! is specified in `docs/devices.md`.

use std::cmp::Ordering;
use std::fmt;

use libp2p_identity::PeerId;

use crate::identity::{
    ACCOUNT_KEY_LEN, AccountKeypair, AccountPublicKey, SIGNATURE_LEN, Signature,
};
use crate::wire;

/// The device list format version this build reads and writes; the first
/// byte of every encoded list.
pub const DEVICES_VERSION: u8 = 1;
/// Most devices one list names: the same as a contact card
/// ([`wire::MAX_CARD_DEVICES`]) and a presence record
/// ([`crate::presence::MAX_DEVICES`]) hold.
pub const MAX_LISTED_DEVICES: usize = wire::MAX_CARD_DEVICES;
/// Longest `PeerId` in bytes (an Ed25519 `PeerId` is 38), as in contact
/// cards.
pub const MAX_PEER_ID_BYTES: usize = wire::MAX_PEER_ID_BYTES;
/// Longest device name, in bytes of UTF-8.
pub const MAX_DEVICE_NAME_BYTES: usize = 64;
/// Largest encoded [`SignedDeviceList`]: the fixed header, the most devices
/// at their longest, and the signature. Longer input is refused unread.
pub const MAX_LIST_BYTES: usize =
    HEADER_BYTES + MAX_LISTED_DEVICES * MAX_DEVICE_BYTES + SIGNATURE_LEN;

/// Version, account key, sequence, issue time, device count.
const HEADER_BYTES: usize = 1 + ACCOUNT_KEY_LEN + 8 + 8 + 1;
/// Peer ID length and bytes, name length and bytes, time added.
const MAX_DEVICE_BYTES: usize = 1 + MAX_PEER_ID_BYTES + 1 + MAX_DEVICE_NAME_BYTES + 8;

const LIST_DOMAIN: &[u8] = b"kith/devices/v1/list";

// ---------------------------------------------------------------- errors

/// Why a device list is not valid, or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// No devices, or more than [`MAX_LISTED_DEVICES`].
    #[error("a device list names 1 to {MAX_LISTED_DEVICES} devices, this names {found}")]
    DeviceCount {
        /// Devices named.
        found: usize,
    },
    /// Two entries name the same device.
    #[error("device {index} is listed twice")]
    DuplicateDevice {
        /// 0-based position of the second entry.
        index: usize,
    },
    /// An entry's peer ID is not the `PeerId` of an Ed25519 key in its
    /// canonical form.
    #[error("device {index} does not have a valid Ed25519 peer ID")]
    InvalidPeerId {
        /// 0-based position in the list.
        index: usize,
    },
    /// A device name that is empty, all blank, or over
    /// [`MAX_DEVICE_NAME_BYTES`].
    #[error(
        "device {index}'s name is {found} bytes; names are 1 to {MAX_DEVICE_NAME_BYTES} bytes and not blank"
    )]
    NameLength {
        /// 0-based position in the list.
        index: usize,
        /// Bytes found.
        found: usize,
    },
    /// A device name with a line break or another control character.
    #[error("device {index}'s name must be one line with no control characters")]
    NameNotOneLine {
        /// 0-based position in the list.
        index: usize,
    },
    /// The next list must carry a higher sequence number than the current.
    #[error("sequence {seq} is not newer than the current list's {current}")]
    SeqNotNewer {
        /// The sequence asked for.
        seq: u64,
        /// The current list's.
        current: u64,
    },
    /// The device to remove is not on the list.
    #[error("that device is not on the list")]
    NotListed,
    /// The keypair given to sign is not the list's account.
    #[error("the list belongs to another account than the key signing it")]
    WrongAccount,
}

/// Why bytes are not a signed device list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than [`MAX_LIST_BYTES`]; refused unread.
    #[error("{found} bytes is over the {max}-byte limit of a device list")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// A device list format version this build does not know.
    #[error(
        "device list format version {found} is not supported (this build reads {DEVICES_VERSION})"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The input ends before the list does.
    #[error("truncated device list")]
    Truncated,
    /// A whole list followed by extra bytes.
    #[error("{count} unexpected bytes after the device list")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A peer ID or name length outside its limits.
    #[error("{field} is {found} bytes; it must be 1 to {max}")]
    FieldLength {
        /// Which field.
        field: &'static str,
        /// The length found.
        found: usize,
        /// The most allowed.
        max: usize,
    },
    /// A device name that is not UTF-8.
    #[error("device {index}'s name is not UTF-8")]
    NameNotUtf8 {
        /// 0-based position in the list.
        index: usize,
    },
    /// The account key is not a valid Ed25519 point.
    #[error("the device list names an invalid account key")]
    InvalidAccountKey,
    /// The list breaks a rule ([`ListError`]).
    #[error("invalid device list: {0}")]
    Invalid(#[from] ListError),
}

/// Why a signed device list is not accepted as the account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The list is signed for another account than the one expected.
    #[error("the device list belongs to another account")]
    WrongAccount,
    /// The signature does not cover the list as it is.
    #[error("the device list's signature does not match (altered or forged)")]
    BadSignature,
}

// ------------------------------------------------------------------ reader

/// Hands out the fields of a byte string front to back without copying.
/// Every read returns `None` when the input ends first; callers turn that
/// into their own "truncated" error.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }
}

// ----------------------------------------------------------------- devices

/// One device on an account's list.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ListedDevice {
    /// The device's libp2p `PeerId` bytes; must be the `PeerId` of an
    /// Ed25519 key (38 bytes, the key inlined).
    pub peer_id: Vec<u8>,
    /// What the person calls it ("Laptop"): 1 to
    /// [`MAX_DEVICE_NAME_BYTES`] bytes, one line.
    pub name: String,
    /// When it was linked, Unix seconds.
    pub added_at: u64,
}

impl fmt::Debug for ListedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ListedDevice");
        match PeerId::from_bytes(&self.peer_id) {
            Ok(peer) => s.field("peer_id", &peer),
            Err(_) => s.field("peer_id", &hex(&self.peer_id)),
        };
        s.field("name", &self.name)
            .field("added_at", &self.added_at)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ListedDevice {
    /// The entry for device `peer` named `name`, added at `added_at`.
    pub fn new(peer: &PeerId, name: impl Into<String>, added_at: u64) -> Self {
        Self {
            peer_id: peer.to_bytes(),
            name: name.into(),
            added_at,
        }
    }

    /// The device's `PeerId`, or `None` when the bytes are not a valid
    /// Ed25519 `PeerId`.
    pub fn peer(&self) -> Option<PeerId> {
        ed25519_peer(&self.peer_id).map(|(peer, _)| peer)
    }

    /// The device's 32-byte Ed25519 public key (what a link code carries),
    /// or `None` when the bytes are not a valid Ed25519 `PeerId`.
    pub fn ed25519_key(&self) -> Option<[u8; 32]> {
        ed25519_peer(&self.peer_id).map(|(_, key)| key)
    }

    fn validate(&self, index: usize) -> Result<(), ListError> {
        if ed25519_peer(&self.peer_id).is_none() {
            return Err(ListError::InvalidPeerId { index });
        }
        check_name(&self.name, index)
    }
}

/// Parses `bytes` as the canonical `PeerId` of an Ed25519 key: an identity
/// multihash of the protobuf-encoded key that re-encodes to exactly these
/// bytes. Returns the `PeerId` and the raw key.
pub(crate) fn ed25519_peer(bytes: &[u8]) -> Option<(PeerId, [u8; 32])> {
    if bytes.is_empty() || bytes.len() > MAX_PEER_ID_BYTES {
        return None;
    }
    // An inlined key is the identity multihash: code 0x00, a one-byte
    // length, then the protobuf-encoded key. Whatever the first two bytes
    // say, re-encoding the key must give back exactly the input.
    let key = libp2p_identity::PublicKey::try_decode_protobuf(bytes.get(2..)?).ok()?;
    let peer = PeerId::from_public_key(&key);
    if peer.to_bytes() != bytes {
        return None;
    }
    let key = key.try_into_ed25519().ok()?.to_bytes();
    Some((peer, key))
}

fn check_name(name: &str, index: usize) -> Result<(), ListError> {
    if name.len() > MAX_DEVICE_NAME_BYTES || name.trim().is_empty() {
        return Err(ListError::NameLength {
            index,
            found: name.len(),
        });
    }
    // Line and paragraph separators break a line without being control
    // characters.
    if name
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err(ListError::NameNotOneLine { index });
    }
    Ok(())
}

// -------------------------------------------------------------------- list

/// An account's devices as of one moment: what the account key signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    /// The account whose devices these are.
    pub account: AccountPublicKey,
    /// Grows with every new list; the highest wins.
    pub seq: u64,
    /// When the list was made, Unix seconds (informational, and a
    /// tie-breaker, see [`Self::supersedes`]).
    pub issued_at: u64,
    /// The devices, 1 to [`MAX_LISTED_DEVICES`], each once.
    pub devices: Vec<ListedDevice>,
}

impl DeviceList {
    /// Signs the list of `devices` for `account`'s key.
    pub fn sign(
        account: &AccountKeypair,
        seq: u64,
        issued_at: u64,
        devices: Vec<ListedDevice>,
    ) -> Result<SignedDeviceList, ListError> {
        Self {
            account: account.public(),
            seq,
            issued_at,
            devices,
        }
        .signed(account)
    }

    /// Signs this list; `account` must be the list's account.
    pub fn signed(self, account: &AccountKeypair) -> Result<SignedDeviceList, ListError> {
        if account.public() != self.account {
            return Err(ListError::WrongAccount);
        }
        self.validate()?;
        let signature = account.sign(&self.signed_bytes());
        Ok(SignedDeviceList {
            list: self,
            signature,
        })
    }

    /// Checks the device count, every peer ID and name, and that no device
    /// is listed twice.
    pub fn validate(&self) -> Result<(), ListError> {
        let count = self.devices.len();
        if count == 0 || count > MAX_LISTED_DEVICES {
            return Err(ListError::DeviceCount { found: count });
        }
        for (index, device) in self.devices.iter().enumerate() {
            device.validate(index)?;
            if self.devices[..index]
                .iter()
                .any(|d| d.peer_id == device.peer_id)
            {
                return Err(ListError::DuplicateDevice { index });
            }
        }
        Ok(())
    }

    /// Whether this list replaces `other`: both are the same account's and
    /// this one has the higher sequence number.
    ///
    /// Two different lists with the same sequence (two devices edited the
    /// list at once) are ordered by issue time, then by their encoded bytes,
    /// so every device and friend settles on the same one; exactly one of
    /// two such lists supersedes the other. Identical lists supersede
    /// neither.
    pub fn supersedes(&self, other: &DeviceList) -> bool {
        if self.account != other.account {
            return false;
        }
        match self.seq.cmp(&other.seq) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => match self.issued_at.cmp(&other.issued_at) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => self.body() > other.body(),
            },
        }
    }

    /// Whether `peer` is on the list.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.get(peer).is_some()
    }

    /// The entry for `peer`, if it is on the list.
    pub fn get(&self, peer: &PeerId) -> Option<&ListedDevice> {
        let bytes = peer.to_bytes();
        self.devices.iter().find(|d| d.peer_id == bytes)
    }

    /// The listed devices' `PeerId`s, in list order: where messages to this
    /// account go. Entries that are not valid (only possible in a list that
    /// was never validated) are skipped.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.devices.iter().filter_map(ListedDevice::peer)
    }

    /// The next list, unsigned: this one plus `device`, under sequence `seq`
    /// (higher than this list's), issued at `now`.
    pub fn with(&self, device: ListedDevice, seq: u64, now: u64) -> Result<DeviceList, ListError> {
        self.check_next(seq)?;
        let mut devices = self.devices.clone();
        devices.push(device);
        let next = DeviceList {
            account: self.account,
            seq,
            issued_at: now,
            devices,
        };
        next.validate()?;
        Ok(next)
    }

    /// The next list, unsigned: this one without `peer`, under sequence
    /// `seq` (higher than this list's), issued at `now`. Removing the last
    /// device is refused ([`ListError::DeviceCount`]).
    pub fn without(&self, peer: &PeerId, seq: u64, now: u64) -> Result<DeviceList, ListError> {
        self.check_next(seq)?;
        let bytes = peer.to_bytes();
        if !self.devices.iter().any(|d| d.peer_id == bytes) {
            return Err(ListError::NotListed);
        }
        let next = DeviceList {
            account: self.account,
            seq,
            issued_at: now,
            devices: self
                .devices
                .iter()
                .filter(|d| d.peer_id != bytes)
                .cloned()
                .collect(),
        };
        next.validate()?;
        Ok(next)
    }

    fn check_next(&self, seq: u64) -> Result<(), ListError> {
        if seq <= self.seq {
            return Err(ListError::SeqNotNewer {
                seq,
                current: self.seq,
            });
        }
        Ok(())
    }

    /// The encoding up to the signature. Valid only for a validated list
    /// (lengths are written as single bytes).
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LIST_BYTES);
        out.push(DEVICES_VERSION);
        out.extend_from_slice(&self.account.to_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        push_len(&mut out, self.devices.len());
        for device in &self.devices {
            push_len(&mut out, device.peer_id.len());
            out.extend_from_slice(&device.peer_id);
            push_len(&mut out, device.name.len());
            out.extend_from_slice(device.name.as_bytes());
            out.extend_from_slice(&device.added_at.to_be_bytes());
        }
        out
    }

    /// `"kith/devices/v1/list" ‖ body`: what the account key signs.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = LIST_DOMAIN.to_vec();
        out.extend_from_slice(&self.body());
        out
    }
}

/// Appends a length that validation has bounded to at most 255.
fn push_len(out: &mut Vec<u8>, len: usize) {
    out.push(u8::try_from(len).unwrap_or(u8::MAX));
}

// ------------------------------------------------------------- signed list

/// A [`DeviceList`] with the account key's signature over it.
///
/// Made only by [`DeviceList::sign`] or [`Self::decode`], so its fields
/// always keep the list rules; whether the signature is the expected
/// account's is for [`Self::verify`] to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDeviceList {
    list: DeviceList,
    signature: Signature,
}

impl SignedDeviceList {
    /// Checks that the list is `account`'s and that `account` signed it
    /// as it is, and returns it.
    pub fn verify(&self, account: &AccountPublicKey) -> Result<&DeviceList, VerifyError> {
        if &self.list.account != account {
            return Err(VerifyError::WrongAccount);
        }
        account
            .verify(&self.list.signed_bytes(), &self.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(&self.list)
    }

    /// The account the list claims to belong to, not yet verified.
    pub fn claimed_account(&self) -> &AccountPublicKey {
        &self.list.account
    }

    /// The sequence number the list claims, not yet verified.
    pub fn claimed_seq(&self) -> u64 {
        self.list.seq
    }

    /// Encodes the list and its signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.list.body();
        out.extend_from_slice(&self.signature.0);
        out
    }

    /// Decodes a signed list, enforcing every limit and list rule but not
    /// checking the signature ([`Self::verify`] does).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_LIST_BYTES {
            return Err(DecodeError::TooLarge {
                found: bytes.len(),
                max: MAX_LIST_BYTES,
            });
        }
        let (&version, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != DEVICES_VERSION {
            return Err(DecodeError::UnknownVersion { found: version });
        }
        let mut r = Reader::new(&bytes[1..]);
        let t = DecodeError::Truncated;
        let account = AccountPublicKey::from_bytes(&r.array().ok_or(t.clone())?)
            .map_err(|_| DecodeError::InvalidAccountKey)?;
        let seq = r.u64().ok_or(t.clone())?;
        let issued_at = r.u64().ok_or(t.clone())?;
        let count = usize::from(r.u8().ok_or(t.clone())?);
        if count == 0 || count > MAX_LISTED_DEVICES {
            return Err(ListError::DeviceCount { found: count }.into());
        }
        let mut devices = Vec::with_capacity(count);
        for index in 0..count {
            let peer_id = length_prefixed(&mut r, "peer ID", MAX_PEER_ID_BYTES)?;
            let name = length_prefixed(&mut r, "device name", MAX_DEVICE_NAME_BYTES)?;
            let name = std::str::from_utf8(name).map_err(|_| DecodeError::NameNotUtf8 { index })?;
            let added_at = r.u64().ok_or(t.clone())?;
            devices.push(ListedDevice {
                peer_id: peer_id.to_vec(),
                name: name.to_owned(),
                added_at,
            });
        }
        let signature = Signature(r.array::<SIGNATURE_LEN>().ok_or(t)?);
        if r.remaining() > 0 {
            return Err(DecodeError::TrailingBytes {
                count: r.remaining(),
            });
        }
        let list = DeviceList {
            account,
            seq,
            issued_at,
            devices,
        };
        list.validate()?;
        Ok(Self { list, signature })
    }
}

fn length_prefixed<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
    max: usize,
) -> Result<&'a [u8], DecodeError> {
    let len = usize::from(r.u8().ok_or(DecodeError::Truncated)?);
    if len == 0 || len > max {
        return Err(DecodeError::FieldLength {
            field,
            found: len,
            max,
        });
    }
    r.take(len).ok_or(DecodeError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        libp2p_identity::Keypair::ed25519_from_bytes([seed; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn device(seed: u8, name: &str) -> ListedDevice {
        ListedDevice::new(&peer(seed), name, 1_000 + u64::from(seed))
    }

    #[test]
    fn limits_match_contact_cards_and_presence() {
        assert_eq!(MAX_LISTED_DEVICES, 8);
        assert_eq!(MAX_LISTED_DEVICES, wire::MAX_CARD_DEVICES);
        assert_eq!(MAX_LISTED_DEVICES, crate::presence::MAX_DEVICES);
    }

    #[test]
    fn the_largest_list_is_exactly_the_limit() {
        let account = AccountKeypair::from_secret_bytes(&[1; 32]);
        // Ed25519 peer IDs are 38 bytes, so the 64-byte peer ID allowance
        // is never reached by a valid list; the rest is at its longest.
        let devices: Vec<ListedDevice> = (0..MAX_LISTED_DEVICES as u8)
            .map(|i| ListedDevice::new(&peer(i), "é".repeat(32), u64::MAX))
            .collect();
        let signed = DeviceList::sign(&account, u64::MAX, u64::MAX, devices).unwrap();
        let bytes = signed.encode();
        assert_eq!(
            bytes.len(),
            MAX_LIST_BYTES - MAX_LISTED_DEVICES * (MAX_PEER_ID_BYTES - 38)
        );
        assert_eq!(SignedDeviceList::decode(&bytes).unwrap(), signed);
    }

    #[test]
    fn only_canonical_ed25519_peer_ids_are_accepted() {
        let good = peer(3).to_bytes();
        assert_eq!(good.len(), 38);
        assert!(ed25519_peer(&good).is_some());
        // A random identity multihash is a PeerId but holds no key.
        assert!(ed25519_peer(&PeerId::random().to_bytes()).is_none());
        // A SHA-256 PeerId (as RSA keys get) names no Ed25519 key.
        let mut hashed = vec![0x12, 0x20];
        hashed.extend_from_slice(&[7; 32]);
        assert!(PeerId::from_bytes(&hashed).is_ok());
        assert!(ed25519_peer(&hashed).is_none());
        let mut flipped = good.clone();
        flipped[6] ^= 0xff;
        // Either not a curve point or a different key: never this device.
        assert_ne!(
            ed25519_peer(&flipped).map(|(p, _)| p),
            Some(peer(3)),
            "a changed key must not read as the same device"
        );
        let mut longer = good.clone();
        longer.push(0);
        assert!(ed25519_peer(&longer).is_none());
        assert!(ed25519_peer(&[]).is_none());
        assert_eq!(
            ed25519_peer(&good).unwrap().1,
            libp2p_identity::Keypair::ed25519_from_bytes([3; 32])
                .unwrap()
                .public()
                .try_into_ed25519()
                .unwrap()
                .to_bytes()
        );
    }

    #[test]
    fn names_are_one_line_and_not_blank() {
        assert_eq!(check_name("Laptop", 0), Ok(()));
        assert_eq!(check_name("Sam’s phone 📱", 0), Ok(()));
        assert!(matches!(
            check_name("", 2),
            Err(ListError::NameLength { index: 2, found: 0 })
        ));
        assert!(matches!(
            check_name("   ", 0),
            Err(ListError::NameLength { .. })
        ));
        assert!(matches!(
            check_name(&"x".repeat(65), 0),
            Err(ListError::NameLength { found: 65, .. })
        ));
        assert_eq!(check_name(&"x".repeat(64), 0), Ok(()));
        for bad in ["a\nb", "a\rb", "a\tb", "a\u{2028}b", "a\u{0}b", "a\u{85}b"] {
            assert_eq!(
                check_name(bad, 1),
                Err(ListError::NameNotOneLine { index: 1 }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn equal_sequences_are_ordered_one_way_only() {
        let account = AccountKeypair::from_secret_bytes(&[1; 32]);
        let base = DeviceList {
            account: account.public(),
            seq: 4,
            issued_at: 100,
            devices: vec![device(1, "a")],
        };
        let mut other = base.clone();
        other.devices = vec![device(2, "b")];
        assert!(base.supersedes(&other) != other.supersedes(&base));
        other.issued_at = 101;
        assert!(other.supersedes(&base));
        assert!(!base.supersedes(&other));
        assert!(!base.supersedes(&base.clone()));
    }
}
