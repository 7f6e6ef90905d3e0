//! Presence records: where a person's devices can be reached, published in
//! the DHT so that only their friends can find and read them.
//!
//! Each account derives two keys from its account secret (so every linked
//! device derives the same ones):
//!
//! - the **presence signing key** `P`, an Ed25519 key that signs records;
//! - the **presence content key** `K`, a symmetric key that seals contents.
//!
//! Friends receive a [`PresenceShare`] — `P`'s public half and `K` — when a
//! friendship is made. The DHT key is `SHA-256("kith/presence/v1/key" ‖
//! P_pub)`, and the record holds `P_pub`, so any DHT node can check that a
//! record is signed by the key it is filed under, while nothing in it names
//! the account key or the Kith ID. Friends can find and read records but not
//! forge them (they never hold `P`'s secret half).
//!
//! A record is a list of per-device [`PresenceEntry`]s (at most
//! [`MAX_DEVICES`]), each signed on its own and carrying its own sequence
//! number and expiry. A device publishes just its own entry; DHT nodes merge
//! what they receive ([`PresenceRecord::merge`]) entry by entry, keeping the
//! highest sequence per device, so linked devices never overwrite each other.
//! A put that brings nothing newer is refused as stale.
//!
//! Every decoder here has a size limit and every check returns a typed
//! [`PresenceError`]; the full byte layout is in `docs/presence.md`.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::identity::AccountKeypair;
use crate::random::random_bytes;

/// The presence record format version.
pub const PRESENCE_VERSION: u8 = 1;
/// Largest encoded record a DHT node stores or a client reads.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Most device entries in one record.
pub const MAX_DEVICES: usize = 8;
/// Largest sealed contents of one entry.
pub const MAX_SEALED_BYTES: usize = 1536;
/// Most addresses one device may list.
pub const MAX_ADDRESSES: usize = 16;
/// Longest address, in bytes of its binary multiaddr form.
pub const MAX_ADDRESS_BYTES: usize = 256;
/// Largest session prekey bundle carried in an entry.
pub const MAX_PREKEY_BYTES: usize = 512;
/// Longest lifetime an entry may claim, in seconds. DHT nodes refuse entries
/// whose expiry is further away than this.
pub const MAX_TTL_SECS: u64 = 48 * 3600;

const KEY_DOMAIN: &[u8] = b"kith/presence/v1/key";
const TAG_DOMAIN: &[u8] = b"kith/presence/v1/tag";
const SIG_DOMAIN: &[u8] = b"kith/presence/v1/entry";
const SIGN_INFO: &[u8] = b"kith/presence/v1/sign";
const SEAL_INFO: &[u8] = b"kith/presence/v1/seal";

/// Why a presence record or entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// Over [`MAX_RECORD_BYTES`]; refused unread.
    #[error("presence record of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Not a record of a version this build knows.
    #[error("presence record version {found} is not supported")]
    UnknownVersion {
        /// The version byte (0 when empty).
        found: u8,
    },
    /// The bytes do not form a record.
    #[error("malformed presence record: {0}")]
    Malformed(String),
    /// The record is filed under a key that is not its presence key's.
    #[error("presence record is filed under the wrong key")]
    WrongKey,
    /// The presence key is not a valid Ed25519 key.
    #[error("presence record carries an invalid key")]
    InvalidKey,
    /// No entries, too many, or two for the same device.
    #[error("presence record must hold 1 to {MAX_DEVICES} distinct devices, this holds {found}")]
    Entries {
        /// Entries found.
        found: usize,
    },
    /// An entry's sealed contents are over [`MAX_SEALED_BYTES`].
    #[error("presence entry contents are {found} bytes, over the {max}-byte limit")]
    ContentsTooLarge {
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// An entry's signature does not match.
    #[error("presence entry signature does not match (forged or altered)")]
    BadSignature,
    /// An entry has expired.
    #[error("presence entry expired at {expires} (now {now})")]
    Expired {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// An entry claims to live longer than [`MAX_TTL_SECS`].
    #[error("presence entry expiry {expires} is more than {MAX_TTL_SECS} s after now ({now})")]
    ExpiryTooFar {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// The record holds exactly what is already stored (Kademlia's own
    /// replication re-sends records); not an attack, nothing to store.
    #[error("presence record is already stored")]
    Duplicate,
    /// Nothing in the record is newer than what is already stored.
    #[error("presence record is not newer than the one stored (sequence {incoming} <= {stored})")]
    Stale {
        /// Highest incoming sequence.
        incoming: u64,
        /// Stored sequence for that device.
        stored: u64,
    },
    /// The contents could not be opened with the content key.
    #[error("presence contents could not be opened (wrong key or altered)")]
    Decrypt,
    /// The opened contents break a limit or do not decode.
    #[error("presence contents are invalid: {0}")]
    InvalidContents(String),
}

/// The presence keys of an account. Held by the account's own devices only.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PresenceKeys {
    signing_seed: [u8; 32],
    content_key: [u8; 32],
}

impl PresenceKeys {
    /// Derives the presence keys of `account`.
    pub fn derive(account: &AccountKeypair) -> Self {
        let secret = account.secret_bytes();
        let kdf = Hkdf::<Sha256>::new(None, secret.as_slice());
        let mut signing_seed = [0u8; 32];
        let mut content_key = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length.
        #[allow(clippy::expect_used)]
        {
            kdf.expand(SIGN_INFO, &mut signing_seed)
                .expect("valid HKDF length");
            kdf.expand(SEAL_INFO, &mut content_key)
                .expect("valid HKDF length");
        }
        Self {
            signing_seed,
            content_key,
        }
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.signing_seed)
    }

    /// What friends need to find and read this account's presence.
    pub fn share(&self) -> PresenceShare {
        PresenceShare {
            public: self.signing_key().verifying_key().to_bytes(),
            content_key: self.content_key,
        }
    }

    /// Seals and signs one device's entry.
    pub fn entry(
        &self,
        contents: &PresenceContents,
        seq: u64,
        expires: u64,
    ) -> Result<PresenceEntry, PresenceError> {
        contents.validate()?;
        let share = self.share();
        let tag = share.device_tag(&contents.peer_id);
        let nonce = random_bytes::<24>();
        let plain = Zeroizing::new(
            postcard::to_allocvec(contents)
                .map_err(|e| PresenceError::InvalidContents(e.to_string()))?,
        );
        let aad = entry_aad(&share.public, &tag, seq, expires);
        let sealed = XChaCha20Poly1305::new(&self.content_key.into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| PresenceError::Decrypt)?;
        if sealed.len() > MAX_SEALED_BYTES {
            return Err(PresenceError::ContentsTooLarge {
                found: sealed.len(),
                max: MAX_SEALED_BYTES,
            });
        }
        let mut entry = PresenceEntry {
            device_tag: tag,
            seq,
            expires,
            nonce,
            sealed,
            signature: [0u8; 64],
        };
        entry.signature = self
            .signing_key()
            .sign(&entry.signed_bytes(&share.public))
            .to_bytes();
        Ok(entry)
    }

    /// A one-entry record holding `entry`, ready to publish.
    pub fn record(&self, entry: PresenceEntry) -> PresenceRecord {
        PresenceRecord {
            presence_key: self.share().public,
            entries: vec![entry],
        }
    }
}

/// What a friend holds to find and read an account's presence: the public
/// presence key and the content key. Never published.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct PresenceShare {
    /// The presence signing key's public half.
    pub public: [u8; 32],
    /// The key that seals entry contents.
    pub content_key: [u8; 32],
}

impl std::fmt::Debug for PresenceShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceShare")
            .field("record_key", &hex32(&self.record_key()))
            .finish_non_exhaustive()
    }
}

fn hex32(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PresenceShare {
    /// The DHT key the account's presence is filed under.
    pub fn record_key(&self) -> [u8; 32] {
        record_key_for(&self.public)
    }

    /// The opaque tag that identifies one device's entry.
    pub fn device_tag(&self, peer_id: &[u8]) -> [u8; 8] {
        let hash = Sha256::new()
            .chain_update(TAG_DOMAIN)
            .chain_update(self.content_key)
            .chain_update(peer_id)
            .finalize();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hash[..8]);
        tag
    }

    /// Opens every live entry of a record found under [`Self::record_key`].
    /// Entries that fail to open are skipped; the record as a whole must
    /// still be valid for this share.
    pub fn open(
        &self,
        record: &PresenceRecord,
        now: u64,
    ) -> Result<Vec<OpenedEntry>, PresenceError> {
        if record.presence_key != self.public {
            return Err(PresenceError::WrongKey);
        }
        let mut out = Vec::with_capacity(record.entries.len());
        for entry in &record.entries {
            if entry.expires <= now {
                continue;
            }
            if let Ok(contents) = self.open_entry(entry) {
                out.push(OpenedEntry {
                    seq: entry.seq,
                    expires: entry.expires,
                    contents,
                });
            }
        }
        Ok(out)
    }

    fn open_entry(&self, entry: &PresenceEntry) -> Result<PresenceContents, PresenceError> {
        let aad = entry_aad(&self.public, &entry.device_tag, entry.seq, entry.expires);
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(&self.content_key.into())
                .decrypt(
                    &XNonce::from(entry.nonce),
                    Payload {
                        msg: &entry.sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| PresenceError::Decrypt)?,
        );
        let (contents, rest): (PresenceContents, &[u8]) = postcard::take_from_bytes(&plain)
            .map_err(|e| PresenceError::InvalidContents(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PresenceError::InvalidContents("trailing bytes".into()));
        }
        contents.validate()?;
        if self.device_tag(&contents.peer_id) != entry.device_tag {
            return Err(PresenceError::InvalidContents(
                "device tag does not match the device".into(),
            ));
        }
        Ok(contents)
    }
}

/// The DHT key for presence key `public`.
pub fn record_key_for(public: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update(KEY_DOMAIN)
        .chain_update(public)
        .finalize()
        .into()
}

fn entry_aad(public: &[u8; 32], tag: &[u8; 8], seq: u64, expires: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + 8 + 16);
    aad.extend_from_slice(public);
    aad.extend_from_slice(tag);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(&expires.to_be_bytes());
    aad
}

/// Where one device can be reached; readable by friends only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceContents {
    /// The device's `PeerId`, as bytes.
    pub peer_id: Vec<u8>,
    /// Its listen, external and relay-circuit addresses, as binary
    /// multiaddrs.
    pub addresses: Vec<Vec<u8>>,
    /// Session prekeys for starting an end-to-end session (empty until the
    /// messenger engine fills it).
    pub prekeys: Vec<u8>,
}

impl PresenceContents {
    fn validate(&self) -> Result<(), PresenceError> {
        let invalid = |what: String| Err(PresenceError::InvalidContents(what));
        if self.peer_id.is_empty() || self.peer_id.len() > 64 {
            return invalid(format!("peer id of {} bytes", self.peer_id.len()));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return invalid(format!(
                "{} addresses, at most {MAX_ADDRESSES}",
                self.addresses.len()
            ));
        }
        if let Some(long) = self.addresses.iter().find(|a| a.len() > MAX_ADDRESS_BYTES) {
            return invalid(format!("an address of {} bytes", long.len()));
        }
        if self.prekeys.len() > MAX_PREKEY_BYTES {
            return invalid(format!("{} bytes of prekeys", self.prekeys.len()));
        }
        Ok(())
    }
}

/// An entry opened by a friend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedEntry {
    /// The entry's sequence number.
    pub seq: u64,
    /// When it expires, Unix seconds.
    pub expires: u64,
    /// Where the device can be reached.
    pub contents: PresenceContents,
}

/// One device's signed, sealed entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// Opaque per-device tag (see [`PresenceShare::device_tag`]).
    pub device_tag: [u8; 8],
    /// Higher replaces lower for the same device.
    pub seq: u64,
    /// Unix seconds after which the entry is void.
    pub expires: u64,
    /// XChaCha20-Poly1305 nonce.
    pub nonce: [u8; 24],
    /// Sealed [`PresenceContents`].
    pub sealed: Vec<u8>,
    /// Signature by the presence key.
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

mod signature_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(d)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))
    }
}

impl PresenceEntry {
    fn signed_bytes(&self, public: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIG_DOMAIN.len() + 32 + 8 + 16 + 24 + self.sealed.len());
        out.extend_from_slice(SIG_DOMAIN);
        out.extend_from_slice(public);
        out.extend_from_slice(&self.device_tag);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.sealed);
        out
    }

    fn verify(&self, key: &VerifyingKey, public: &[u8; 32]) -> Result<(), PresenceError> {
        if self.sealed.len() > MAX_SEALED_BYTES {
            return Err(PresenceError::ContentsTooLarge {
                found: self.sealed.len(),
                max: MAX_SEALED_BYTES,
            });
        }
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&self.signed_bytes(public), &signature)
            .map_err(|_| PresenceError::BadSignature)
    }
}

/// What the DHT stores under a presence key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The presence signing key's public half.
    pub presence_key: [u8; 32],
    /// One entry per device.
    pub entries: Vec<PresenceEntry>,
}

impl PresenceRecord {
    /// Encodes the record: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        postcard::to_extend(self, vec![PRESENCE_VERSION]).expect("record encodes")
    }

    /// Decodes a record without checking signatures or times.
    pub fn decode(bytes: &[u8]) -> Result<Self, PresenceError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(PresenceError::TooLarge {
                found: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        match bytes.first() {
            Some(&PRESENCE_VERSION) => {}
            other => {
                return Err(PresenceError::UnknownVersion {
                    found: other.copied().unwrap_or(0),
                });
            }
        }
        let (record, rest): (Self, &[u8]) = postcard::take_from_bytes(&bytes[1..])
            .map_err(|e| PresenceError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PresenceError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(record)
    }

    /// Full check of a record received for DHT key `key` at Unix time
    /// `now`: size, version, key, entry count and uniqueness, every
    /// signature, and every expiry (none beyond [`MAX_TTL_SECS`]). Entries
    /// already expired are dropped from the result; a record with none left
    /// is refused as expired.
    pub fn verify(key: &[u8], bytes: &[u8], now: u64) -> Result<Self, PresenceError> {
        let record = Self::decode(bytes)?;
        if key != record_key_for(&record.presence_key) {
            return Err(PresenceError::WrongKey);
        }
        let verifying = VerifyingKey::from_bytes(&record.presence_key)
            .map_err(|_| PresenceError::InvalidKey)?;
        let count = record.entries.len();
        let mut tags: Vec<[u8; 8]> = record.entries.iter().map(|e| e.device_tag).collect();
        tags.sort_unstable();
        tags.dedup();
        if count == 0 || count > MAX_DEVICES || tags.len() != count {
            return Err(PresenceError::Entries { found: count });
        }
        for entry in &record.entries {
            entry.verify(&verifying, &record.presence_key)?;
            if entry.expires > now.saturating_add(MAX_TTL_SECS) {
                return Err(PresenceError::ExpiryTooFar {
                    expires: entry.expires,
                    now,
                });
            }
        }
        // Expired entries are dropped, not fatal: one device that went
        // offline must not take its account's other devices down with it.
        let mut record = record;
        let latest = record.entries.iter().map(|e| e.expires).max().unwrap_or(0);
        record.entries.retain(|e| e.expires > now);
        if record.entries.is_empty() {
            return Err(PresenceError::Expired {
                expires: latest,
                now,
            });
        }
        Ok(record)
    }

    /// Merges a verified `incoming` record into the `stored` one (same
    /// presence key), keeping the highest sequence per device and dropping
    /// expired entries. When `incoming` brings nothing newer it is refused:
    /// [`PresenceError::Stale`] if it holds an older entry (a replay),
    /// [`PresenceError::Duplicate`] if it only repeats what is stored. With more than [`MAX_DEVICES`]
    /// devices, the entries that expire soonest are dropped.
    pub fn merge(stored: Option<&Self>, incoming: Self, now: u64) -> Result<Self, PresenceError> {
        let Some(stored) = stored.filter(|s| s.presence_key == incoming.presence_key) else {
            return Ok(incoming);
        };
        let mut by_tag: BTreeMap<[u8; 8], PresenceEntry> = stored
            .entries
            .iter()
            .filter(|e| e.expires > now)
            .map(|e| (e.device_tag, e.clone()))
            .collect();
        let mut newer = false;
        let mut stale = None;
        for entry in incoming.entries.into_iter().filter(|e| e.expires > now) {
            match by_tag.get(&entry.device_tag) {
                Some(old) if old.seq > entry.seq => {
                    stale.get_or_insert((entry.seq, old.seq));
                }
                Some(old) if old.seq == entry.seq => {}
                _ => {
                    newer = true;
                    by_tag.insert(entry.device_tag, entry);
                }
            }
        }
        if !newer {
            return Err(match stale {
                Some((incoming, stored)) => PresenceError::Stale { incoming, stored },
                None => PresenceError::Duplicate,
            });
        }
        let mut entries: Vec<PresenceEntry> = by_tag.into_values().collect();
        if entries.len() > MAX_DEVICES {
            entries.sort_by_key(|e| std::cmp::Reverse(e.expires));
            entries.truncate(MAX_DEVICES);
        }
        Ok(Self {
            presence_key: incoming.presence_key,
            entries,
        })
    }

    /// The latest expiry among the entries (Unix seconds): the DHT store
    /// keeps the record until then.
    pub fn latest_expiry(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.expires).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn contents(peer: u8) -> PresenceContents {
        PresenceContents {
            peer_id: vec![peer; 38],
            addresses: vec![b"/ip4/127.0.0.1/tcp/4001".to_vec()],
            prekeys: Vec::new(),
        }
    }

    fn keys() -> PresenceKeys {
        PresenceKeys::derive(&AccountKeypair::generate())
    }

    #[test]
    fn a_friend_opens_what_the_owner_published() {
        let keys = keys();
        let share = keys.share();
        let record = keys.record(keys.entry(&contents(1), 5, NOW + 3600).unwrap());
        let bytes = record.encode();
        let verified = PresenceRecord::verify(&share.record_key(), &bytes, NOW).unwrap();
        let opened = share.open(&verified, NOW).unwrap();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].contents, contents(1));
        assert_eq!(opened[0].seq, 5);
    }

    #[test]
    fn linked_devices_derive_the_same_keys() {
        let account = AccountKeypair::generate();
        let a = PresenceKeys::derive(&account).share();
        let b = PresenceKeys::derive(&AccountKeypair::from_secret_bytes(&account.secret_bytes()))
            .share();
        assert_eq!(a, b);
        assert_ne!(a.public, account.public().to_bytes());
    }

    #[test]
    fn forged_expired_far_and_misfiled_records_are_refused() {
        let keys = keys();
        let key = keys.share().record_key();
        let good = keys.record(keys.entry(&contents(1), 1, NOW + 60).unwrap());

        let mut forged = good.clone();
        forged.entries[0].seq = 2;
        assert_eq!(
            PresenceRecord::verify(&key, &forged.encode(), NOW),
            Err(PresenceError::BadSignature)
        );

        let expired = keys.record(keys.entry(&contents(1), 1, NOW - 1).unwrap());
        assert!(matches!(
            PresenceRecord::verify(&key, &expired.encode(), NOW),
            Err(PresenceError::Expired { .. })
        ));

        let far = keys.record(keys.entry(&contents(1), 1, NOW + MAX_TTL_SECS + 1).unwrap());
        assert!(matches!(
            PresenceRecord::verify(&key, &far.encode(), NOW),
            Err(PresenceError::ExpiryTooFar { .. })
        ));

        assert_eq!(
            PresenceRecord::verify(&[0u8; 32], &good.encode(), NOW),
            Err(PresenceError::WrongKey)
        );

        // Someone else's validly signed record filed under this key.
        let other = self::keys();
        let theirs = other.record(other.entry(&contents(1), 9, NOW + 60).unwrap());
        assert_eq!(
            PresenceRecord::verify(&key, &theirs.encode(), NOW),
            Err(PresenceError::WrongKey)
        );

        let oversized = vec![PRESENCE_VERSION; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            PresenceRecord::verify(&key, &oversized, NOW),
            Err(PresenceError::TooLarge { .. })
        ));

        let mut empty = good.clone();
        empty.entries.clear();
        assert_eq!(
            PresenceRecord::verify(&key, &empty.encode(), NOW),
            Err(PresenceError::Entries { found: 0 })
        );
        let mut twice = good.clone();
        twice.entries.push(good.entries[0].clone());
        assert_eq!(
            PresenceRecord::verify(&key, &twice.encode(), NOW),
            Err(PresenceError::Entries { found: 2 })
        );
    }

    #[test]
    fn merge_keeps_the_newest_entry_per_device_and_refuses_stale_puts() {
        let keys = keys();
        let laptop_v1 = keys.entry(&contents(1), 10, NOW + 60).unwrap();
        let laptop_v2 = keys.entry(&contents(1), 11, NOW + 60).unwrap();
        let desktop = keys.entry(&contents(2), 3, NOW + 60).unwrap();

        let stored = keys.record(laptop_v1.clone());
        let merged =
            PresenceRecord::merge(Some(&stored), keys.record(desktop.clone()), NOW).unwrap();
        assert_eq!(merged.entries.len(), 2);

        let merged =
            PresenceRecord::merge(Some(&merged), keys.record(laptop_v2.clone()), NOW).unwrap();
        assert_eq!(merged.entries.len(), 2);
        assert!(merged.entries.contains(&laptop_v2));
        assert!(merged.entries.contains(&desktop));

        assert_eq!(
            PresenceRecord::merge(Some(&merged), keys.record(laptop_v1), NOW),
            Err(PresenceError::Stale {
                incoming: 10,
                stored: 11
            })
        );
        // Re-sending the very same entry (Kademlia replication) is a
        // duplicate, not a replay.
        assert_eq!(
            PresenceRecord::merge(Some(&merged), keys.record(laptop_v2), NOW),
            Err(PresenceError::Duplicate)
        );
    }

    #[test]
    fn merge_drops_expired_entries_and_caps_devices() {
        let keys = keys();
        let old = keys.entry(&contents(1), 1, NOW + 10).unwrap();
        let stored = keys.record(old);
        let fresh = keys.entry(&contents(2), 1, NOW + 60).unwrap();
        let merged = PresenceRecord::merge(Some(&stored), keys.record(fresh), NOW + 20).unwrap();
        assert_eq!(merged.entries.len(), 1);

        let mut record = keys.record(keys.entry(&contents(0), 1, NOW + 100).unwrap());
        for device in 1..=MAX_DEVICES as u8 {
            let entry = keys
                .entry(&contents(device), 1, NOW + 100 + u64::from(device))
                .unwrap();
            record = PresenceRecord::merge(Some(&record), keys.record(entry), NOW).unwrap();
        }
        assert_eq!(record.entries.len(), MAX_DEVICES);
        assert!(record.entries.iter().all(|e| e.expires >= NOW + 101));
        assert_eq!(record.latest_expiry(), Some(NOW + 100 + MAX_DEVICES as u64));
    }

    #[test]
    fn an_expired_device_does_not_void_its_siblings() {
        let keys = keys();
        let key = keys.share().record_key();
        let gone = keys.entry(&contents(1), 1, NOW + 10).unwrap();
        let live = keys.entry(&contents(2), 1, NOW + 3600).unwrap();
        let record = PresenceRecord {
            presence_key: keys.share().public,
            entries: vec![gone, live.clone()],
        };
        let verified = PresenceRecord::verify(&key, &record.encode(), NOW + 20).unwrap();
        assert_eq!(verified.entries, vec![live]);
        assert_eq!(verified.latest_expiry(), Some(NOW + 3600));
    }

    #[test]
    fn strangers_cannot_read_entries() {
        let keys = keys();
        let record = keys.record(keys.entry(&contents(1), 1, NOW + 60).unwrap());
        let mut wrong = keys.share();
        wrong.content_key[0] ^= 1;
        assert!(wrong.open(&record, NOW).unwrap().is_empty());
    }

    #[test]
    fn contents_limits_are_enforced_when_publishing() {
        let keys = keys();
        let mut too_many = contents(1);
        too_many.addresses = vec![vec![0u8; 8]; MAX_ADDRESSES + 1];
        assert!(matches!(
            keys.entry(&too_many, 1, NOW),
            Err(PresenceError::InvalidContents(_))
        ));
    }
}
