//! Offline mailbox: the signed, sealed items volunteers keep for accounts
//! that are offline, and the small signed messages around them. No I/O: the
//! deposit, fetch and hand-off protocols and the storage behind them are
//! built on these types elsewhere.
//!
//! Data flows like this:
//!
//! 1. The sender wraps its content in a [`SenderStamp`] (item ID, mailbox
//!    address, expiry), seals that to the recipient in an
//!    [`envelope`](crate::envelope) — so the sender's own account signature
//!    covers the stamp — and puts the envelope in a [`MailboxItem`] whose
//!    outer header is signed by a **one-time key** made for this item alone
//!    and carries a small proof of work ([`MailboxItem::seal`]). Volunteers
//!    see neither the sender nor the contents.
//! 2. A volunteer checks the item against its [`Limits`]
//!    ([`MailboxItem::verify`]); every failure maps to a typed
//!    [`DepositRefusal`] the sender can show. If it accepts, it signs a
//!    [`WitnessReceipt`] (item ID, time received) with its node key.
//! 3. The recipient proves it holds the account key behind the
//!    [`mailbox_address`] by answering a [`FetchChallenge`] with a
//!    [`FetchProof`], opens what it fetched ([`MailboxItem::open`], which
//!    checks that the sender's stamp matches the outer header, so no
//!    volunteer can have extended the item's life), judges the sender's
//!    clock against the receipts ([`witnessed_time`]), and finally signs a
//!    [`FetchAck`] so volunteers delete the items.
//!
//! Every type has a strict, bounded decoder: the input length is checked
//! before anything is read or allocated, integers must be canonical
//! varints, trailing bytes are refused, and each failure is a typed
//! [`DecodeError`]. Encoders refuse whatever the decoders would refuse. The
//! byte layouts are specified in `docs/mailbox.md`.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::envelope::{self, OpenError, SealError};
use crate::identity::{
    ACCOUNT_KEY_LEN, AccountKeypair, AccountPublicKey, DeviceKeypair, SIGNATURE_LEN, Signature,
};
use crate::random::random_bytes;

/// The mailbox format version this build reads and writes; the first byte
/// of every encoded mailbox value.
pub const MAILBOX_VERSION: u8 = 1;
/// Largest sealed envelope one item may carry, in bytes.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;
/// Longest encoded [`SenderStamp`]: version, item ID, address and the
/// longest expiry varint.
pub const MAX_STAMP_BYTES: usize = 1 + ITEM_ID_LEN + ADDRESS_LEN + MAX_VARINT_LEN;
/// Largest content [`MailboxItem::seal`] takes: what fits in
/// [`MAX_ITEM_BYTES`] after the envelope and the stamp.
pub const MAX_CONTENT_BYTES: usize = MAX_ITEM_BYTES - envelope::OVERHEAD - MAX_STAMP_BYTES;
/// Largest encoded item: version, ID, address, expiry varint, one-time
/// key, nonce varint, sealed length varint (3 bytes for 64 KiB), sealed
/// bytes and signature. Longer input is refused unread.
pub const MAX_ENCODED_ITEM_BYTES: usize = 1
    + ITEM_ID_LEN
    + ADDRESS_LEN
    + MAX_VARINT_LEN
    + NODE_KEY_LEN
    + MAX_VARINT_LEN
    + 3
    + MAX_ITEM_BYTES
    + SIGNATURE_LEN;
/// Largest encoded [`WitnessReceipt`].
pub const MAX_RECEIPT_BYTES: usize =
    1 + ITEM_ID_LEN + NODE_KEY_LEN + MAX_VARINT_LEN + SIGNATURE_LEN;
/// Largest encoded [`FetchChallenge`].
pub const MAX_CHALLENGE_BYTES: usize = 1 + ADDRESS_LEN + 32 + NODE_KEY_LEN + MAX_VARINT_LEN;
/// Encoded length of a [`FetchProof`] (it has no variable parts).
pub const FETCH_PROOF_BYTES: usize = 1 + ACCOUNT_KEY_LEN + SIGNATURE_LEN;
/// Most item IDs one [`FetchAck`] may name.
pub const MAX_ACK_ITEMS: usize = 256;
/// Largest encoded [`FetchAck`]: version, address, account key, count
/// varint (2 bytes for 256), IDs and signature.
pub const MAX_ACK_BYTES: usize =
    1 + ADDRESS_LEN + ACCOUNT_KEY_LEN + 2 + MAX_ACK_ITEMS * ITEM_ID_LEN + SIGNATURE_LEN;
/// Largest encoded [`DepositRefusal`]: version, variant, one varint field.
pub const MAX_REFUSAL_BYTES: usize = 1 + 1 + MAX_VARINT_LEN;

/// Volunteers per mailbox address: a sender deposits each item with the
/// `R` peers closest to the address.
pub const DEFAULT_REPLICAS: usize = 3;
/// Proof-of-work difficulty volunteers require by default, in leading zero
/// bits: 2^17 SHA-256 blocks on average, measured at about 20 ms per item
/// on one core of an AMD EPYC with SHA instructions in a release build
/// (roughly three times that without them; the spread is geometric, so one
/// item in twenty takes three times the mean). Enough to make mass junk
/// cost something, unnoticeable for a person.
pub const DEFAULT_POW_DIFFICULTY: u8 = 17;
/// Highest difficulty [`MailboxItem::seal`] will solve: 2^24 hashes, a few
/// seconds. Asked for more, it refuses rather than stalling the sender.
pub const MAX_POW_DIFFICULTY: u8 = 24;
/// Longest lifetime volunteers accept by default: two weeks, long enough
/// for a holiday without a laptop.
pub const DEFAULT_MAX_TTL_SECS: u64 = 14 * 24 * 3600;
/// Lifetime senders give items by default: one week, well inside
/// [`DEFAULT_MAX_TTL_SECS`] so that clock skew and hand-offs never push an
/// item over a volunteer's limit.
pub const DEFAULT_ITEM_TTL_SECS: u64 = 7 * 24 * 3600;
/// How long a volunteer's [`FetchChallenge`] stays answerable.
pub const CHALLENGE_TTL_SECS: u64 = 60;
/// How far a sender's clock may be from the witnesses' for its time to be
/// shown as witnessed: five minutes covers clock drift and the seconds a
/// deposit takes (lookup, proof of work, three round trips).
pub const DEFAULT_WITNESS_TOLERANCE_MS: u64 = 5 * 60 * 1000;

/// A mailbox item's random 128-bit identity.
pub type ItemId = [u8; ITEM_ID_LEN];
/// Where an account's mail is kept: see [`mailbox_address`].
pub type MailboxAddress = [u8; ADDRESS_LEN];
/// A 32-byte Ed25519 public key that is not an account key: a volunteer's
/// libp2p node key or an item's one-time key.
pub type NodeKey = [u8; NODE_KEY_LEN];

const ITEM_ID_LEN: usize = 16;
const ADDRESS_LEN: usize = 32;
const NODE_KEY_LEN: usize = 32;
const MAX_VARINT_LEN: usize = 10;

const ADDRESS_DOMAIN: &[u8] = b"kith/mailbox/v1/address";
const HEADER_DOMAIN: &[u8] = b"kith/mailbox/v1/item";
const ITEM_SIG_DOMAIN: &[u8] = b"kith/mailbox/v1/item-sig";
const RECEIPT_DOMAIN: &[u8] = b"kith/mailbox/v1/receipt";
const FETCH_DOMAIN: &[u8] = b"kith/mailbox/v1/fetch";
const ACK_DOMAIN: &[u8] = b"kith/mailbox/v1/ack";

/// Length of the signed item header (see [`MailboxItem`]).
const HEADER_LEN: usize = 20 + 1 + ITEM_ID_LEN + ADDRESS_LEN + 8 + NODE_KEY_LEN + 8 + 32;

/// The mailbox address of `account`:
/// `SHA-256("kith/mailbox/v1/address" ‖ account key)`. Volunteers for it
/// are the peers closest to it in the DHT.
pub fn mailbox_address(account: &AccountPublicKey) -> MailboxAddress {
    Sha256::new()
        .chain_update(ADDRESS_DOMAIN)
        .chain_update(account.to_bytes())
        .finalize()
        .into()
}

// ---------------------------------------------------------------- errors

/// Why bytes are not a mailbox value of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than the largest valid value; refused unread.
    #[error("{found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// A mailbox format version this build does not know.
    #[error("mailbox format version {found} is not supported (this build reads {MAILBOX_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The input ends before the value does.
    #[error("truncated input")]
    Truncated,
    /// The bytes do not form a value.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    /// A whole value followed by extra bytes.
    #[error("{count} unexpected bytes after the value")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A length or count outside its limits.
    #[error("{field} is {found}; it must be {min} to {max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// What was found.
        found: usize,
        /// The least allowed.
        min: usize,
        /// The most allowed.
        max: usize,
    },
    /// An account key that is not a valid Ed25519 point.
    #[error("invalid account key")]
    InvalidAccountKey,
}

/// Why a value could not be encoded: it breaks a limit its decoder
/// enforces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A length or count outside its limits.
    #[error("{field} is {found}; it must be {min} to {max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// What was found.
        found: usize,
        /// The least allowed.
        min: usize,
        /// The most allowed.
        max: usize,
    },
}

fn check_range(
    field: &'static str,
    found: usize,
    min: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if found < min || found > max {
        return Err(EncodeError::OutOfRange {
            field,
            found,
            min,
            max,
        });
    }
    Ok(())
}

impl From<EncodeError> for DecodeError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::OutOfRange {
                field,
                found,
                min,
                max,
            } => DecodeError::OutOfRange {
                field,
                found,
                min,
                max,
            },
        }
    }
}

/// Why an item could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealItemError {
    /// The content is over [`MAX_CONTENT_BYTES`].
    #[error("content of {found} bytes is over the {max}-byte mailbox limit")]
    ContentTooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The sealed bytes are empty or over [`MAX_ITEM_BYTES`].
    #[error("sealed contents of {found} bytes; items hold 1 to {max} bytes")]
    SealedSize {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The difficulty asked for is over [`MAX_POW_DIFFICULTY`].
    #[error("proof of work of {requested} bits asked for; at most {max} are solved")]
    DifficultyTooHigh {
        /// Bits asked for.
        requested: u8,
        /// The most this build solves.
        max: u8,
    },
    /// Sealing the envelope failed.
    #[error("could not seal the item: {0}")]
    Envelope(#[from] SealError),
    /// No nonce met the difficulty (cannot happen below
    /// [`MAX_POW_DIFFICULTY`] short of a broken hash function).
    #[error("no proof of work was found")]
    NoSolution,
}

/// Why a volunteer refuses an item. Each maps to a [`DepositRefusal`]
/// ([`ItemError::refusal`]) for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    /// The item holds no sealed contents.
    #[error("the item holds no sealed contents")]
    Empty,
    /// The sealed contents are over the volunteer's limit.
    #[error("the item's {found} bytes are over the {max}-byte limit")]
    TooLarge {
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The one-time key's signature does not cover the item as it is.
    #[error(
        "the item's signature does not match: it was altered after signing (a changed expiry, item ID, mailbox address or contents) or forged"
    )]
    BadSignature,
    /// The proof of work is below the volunteer's difficulty.
    #[error("the item's proof of work has {found} bits; {required} are required")]
    WeakProofOfWork {
        /// Leading zero bits found.
        found: u32,
        /// Bits required.
        required: u8,
    },
    /// The item has expired.
    #[error("the item expired at {expires} (now {now})")]
    Expired {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// The item claims to live longer than the volunteer's maximum.
    #[error("the item expires at {expires}, more than {max} s after now ({now})")]
    TtlTooLong {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
        /// The longest lifetime accepted, seconds.
        max: u64,
    },
}

impl ItemError {
    /// The refusal a volunteer sends back for this error.
    pub fn refusal(&self) -> DepositRefusal {
        DepositRefusal::from(self)
    }
}

/// Why a recipient could not open an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenItemError {
    /// The item is addressed to another account's mailbox.
    #[error("the item is for another mailbox")]
    WrongMailbox,
    /// The envelope did not open.
    #[error("the item's envelope did not open: {0}")]
    Envelope(#[from] OpenError),
    /// The opened payload does not start with a valid stamp.
    #[error("the item's contents carry no valid sender stamp: {0}")]
    Stamp(DecodeError),
    /// The sender signed a different header than the item carries.
    #[error(
        "the sender signed a different {field} than the item carries: someone re-wrapped the item (for example to extend its life)"
    )]
    StampMismatch {
        /// The field that differs: "item ID", "mailbox address" or
        /// "expiry".
        field: &'static str,
    },
}

/// Why a witness receipt could not be made or checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The node key is not an Ed25519 key.
    #[error("volunteer node keys must be Ed25519")]
    NotEd25519,
    /// The volunteer key is not a valid Ed25519 point.
    #[error("the receipt names an invalid volunteer key")]
    InvalidKey,
    /// The signature does not match.
    #[error("the receipt's signature does not match (forged or altered)")]
    BadSignature,
}

/// Why a fetch challenge, proof or acknowledgement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The account key does not hash to the mailbox address.
    #[error("that account does not own this mailbox")]
    WrongAccount,
    /// The challenge is for another mailbox.
    #[error("the challenge is for another mailbox")]
    WrongMailbox,
    /// The challenge names another volunteer than the one asking.
    #[error("the challenge names another volunteer")]
    WrongVolunteer,
    /// The challenge has expired.
    #[error("the challenge expired at {expires} (now {now})")]
    ChallengeExpired {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// The account signature does not match.
    #[error("the account signature does not match")]
    BadSignature,
}

// ------------------------------------------------------ varints and reader

fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Appends `value` as postcard writes a `u64`: LEB128, least significant
/// group first.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a byte string as postcard writes one: varint length, bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads a mailbox value: checks the size limit and version first, then
/// hands out fields without copying.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn start(bytes: &'a [u8], max: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max {
            return Err(DecodeError::TooLarge {
                found: bytes.len(),
                max,
            });
        }
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != MAILBOX_VERSION {
            return Err(DecodeError::UnknownVersion { found: version });
        }
        Ok(Self { rest })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A canonical varint: at most 10 bytes, no overflow, no redundant
    /// trailing zero group (so every value has exactly one encoding).
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let [byte] = self.array::<1>()?;
            if i == MAX_VARINT_LEN - 1 && byte > 1 {
                return Err(DecodeError::Malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(DecodeError::Malformed("non-canonical varint"));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed("varint overflows 64 bits"))
    }

    /// A length-prefixed byte string of `min..=max` bytes, borrowed: the
    /// length is checked before anything is copied.
    fn bytes(
        &mut self,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        check_range(field, len, min, max)?;
        self.take(len)
    }

    fn account_key(&mut self) -> Result<AccountPublicKey, DecodeError> {
        AccountPublicKey::from_bytes(&self.array()?).map_err(|_| DecodeError::InvalidAccountKey)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if !self.rest.is_empty() {
            return Err(DecodeError::TrailingBytes {
                count: self.rest.len(),
            });
        }
        Ok(())
    }
}

fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for &byte in hash {
        bits += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    bits
}

fn verify_ed25519(key: &NodeKey, message: &[u8], signature: &[u8; 64]) -> Result<(), ()> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| ())?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .map_err(|_| ())
}

// ------------------------------------------------------------------ limits

/// What a volunteer accepts. The defaults suit a desktop client or a small
/// `kithd` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest sealed envelope per item, in bytes; at most
    /// [`MAX_ITEM_BYTES`] (the default).
    pub max_item_bytes: usize,
    /// Longest lifetime, in seconds from the time of the deposit
    /// (default [`DEFAULT_MAX_TTL_SECS`], two weeks).
    pub max_ttl_secs: u64,
    /// Leading zero bits the proof of work must have (default
    /// [`DEFAULT_POW_DIFFICULTY`]).
    pub pow_difficulty: u8,
    /// Bytes of encoded items kept per mailbox address (default 4 MiB:
    /// 64 items of the largest size, thousands of chat messages).
    pub mailbox_quota_bytes: u64,
    /// Bytes of encoded items kept in total (default 256 MiB).
    pub total_quota_bytes: u64,
    /// Deposits one peer may make per minute, sustained (default 30).
    pub peer_deposits_per_minute: u32,
    /// Deposits one peer may make in a burst above that rate (default 10).
    pub peer_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_item_bytes: MAX_ITEM_BYTES,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
            pow_difficulty: DEFAULT_POW_DIFFICULTY,
            mailbox_quota_bytes: 4 * 1024 * 1024,
            total_quota_bytes: 256 * 1024 * 1024,
            peer_deposits_per_minute: 30,
            peer_burst: 10,
        }
    }
}

impl Limits {
    /// Whether an item of `incoming` encoded bytes fits, given the bytes
    /// already stored for its mailbox and in total.
    pub fn check_quota(
        &self,
        mailbox_used: u64,
        total_used: u64,
        incoming: u64,
    ) -> Result<(), DepositRefusal> {
        if mailbox_used.saturating_add(incoming) > self.mailbox_quota_bytes {
            return Err(DepositRefusal::MailboxFull {
                quota: self.mailbox_quota_bytes,
            });
        }
        if total_used.saturating_add(incoming) > self.total_quota_bytes {
            return Err(DepositRefusal::VolunteerFull);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------- items

/// One item in a volunteer's keeping: a sealed envelope to the recipient
/// behind an outer header signed by a one-time key.
///
/// The format version is not a field: [`Self::encode`] writes
/// [`MAILBOX_VERSION`], [`Self::decode`] requires it, and the signature
/// covers it.
#[derive(Clone, PartialEq, Eq)]
pub struct MailboxItem {
    /// Random identity; volunteers and the recipient de-duplicate by it.
    pub item_id: ItemId,
    /// The recipient's [`mailbox_address`].
    pub address: MailboxAddress,
    /// Unix seconds after which volunteers delete the item. Signed by the
    /// one-time key here and by the sender inside the envelope.
    pub expires: u64,
    /// The public half of the key made for this item alone.
    pub one_time_key: NodeKey,
    /// The proof-of-work nonce.
    pub pow_nonce: u64,
    /// A sealed envelope holding a [`SenderStamp`] and the content.
    pub sealed: Vec<u8>,
    /// Ed25519 signature by the one-time key over everything above.
    pub signature: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for MailboxItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxItem")
            .field("item_id", &hex(&self.item_id))
            .field("address", &hex(&self.address))
            .field("expires", &self.expires)
            .field("sealed_len", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl MailboxItem {
    /// Makes an item carrying `content` from `sender` to `recipient` that
    /// volunteers keep until `expires` (Unix seconds): picks a random item
    /// ID, stamps and seals the content, signs the header with a fresh
    /// one-time key and solves the proof of work at `difficulty` bits.
    pub fn seal(
        sender: &AccountKeypair,
        recipient: &AccountPublicKey,
        content: &[u8],
        expires: u64,
        difficulty: u8,
    ) -> Result<Self, SealItemError> {
        if content.len() > MAX_CONTENT_BYTES {
            return Err(SealItemError::ContentTooLarge {
                found: content.len(),
                max: MAX_CONTENT_BYTES,
            });
        }
        check_difficulty(difficulty)?;
        let stamp = SenderStamp {
            item_id: random_bytes(),
            address: mailbox_address(recipient),
            expires,
        };
        let payload =
            Zeroizing::new(
                stamp
                    .wrap(content)
                    .map_err(|_| SealItemError::ContentTooLarge {
                        found: content.len(),
                        max: MAX_CONTENT_BYTES,
                    })?,
            );
        let sealed = envelope::seal(sender, recipient, &payload)?;
        let one_time_secret = Zeroizing::new(random_bytes::<32>());
        Self::sign_sealed(
            stamp.item_id,
            stamp.address,
            expires,
            sealed,
            &one_time_secret,
            difficulty,
        )
    }

    /// Builds and signs an item around already sealed bytes, with the
    /// one-time key made from `one_time_secret`, solving the proof of work
    /// from nonce 0 upwards. Deterministic: the same inputs give the same
    /// bytes. [`Self::seal`] is the usual way in.
    pub fn sign_sealed(
        item_id: ItemId,
        address: MailboxAddress,
        expires: u64,
        sealed: Vec<u8>,
        one_time_secret: &[u8; 32],
        difficulty: u8,
    ) -> Result<Self, SealItemError> {
        if sealed.is_empty() || sealed.len() > MAX_ITEM_BYTES {
            return Err(SealItemError::SealedSize {
                found: sealed.len(),
                max: MAX_ITEM_BYTES,
            });
        }
        check_difficulty(difficulty)?;
        let key = SigningKey::from_bytes(one_time_secret);
        let mut item = Self {
            item_id,
            address,
            expires,
            one_time_key: key.verifying_key().to_bytes(),
            pow_nonce: 0,
            sealed,
            signature: [0u8; SIGNATURE_LEN],
        };
        let header = item.header();
        let base = Sha256::new().chain_update(header);
        let mut found = None;
        for nonce in 0..=u64::MAX {
            let hash = base.clone().chain_update(nonce.to_be_bytes()).finalize();
            if leading_zero_bits(&hash) >= u32::from(difficulty) {
                found = Some(nonce);
                break;
            }
        }
        item.pow_nonce = found.ok_or(SealItemError::NoSolution)?;
        item.signature = key.sign(&signed_item(&header, item.pow_nonce)).to_bytes();
        Ok(item)
    }

    /// The header the proof of work and the signature cover:
    /// `"kith/mailbox/v1/item" ‖ version ‖ item ID ‖ address ‖ expiry ‖
    /// one-time key ‖ sealed length ‖ SHA-256(sealed)`, integers as 8
    /// bytes big-endian.
    fn header(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let len = u64::try_from(self.sealed.len()).unwrap_or(u64::MAX);
        let digest: [u8; 32] = Sha256::digest(&self.sealed).into();
        let parts: [&[u8]; 8] = [
            HEADER_DOMAIN,
            &[MAILBOX_VERSION],
            &self.item_id,
            &self.address,
            &self.expires.to_be_bytes(),
            &self.one_time_key,
            &len.to_be_bytes(),
            &digest,
        ];
        let mut at = 0;
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// Leading zero bits of `SHA-256(header ‖ nonce)`: the work done.
    pub fn work_bits(&self) -> u32 {
        leading_zero_bits(&pow_hash(&self.header(), self.pow_nonce))
    }

    /// What a volunteer checks before accepting the item at Unix time
    /// `now`, in this order: size, the one-time key's signature (so any
    /// alteration of a signed field, the expiry included, reads as
    /// [`ItemError::BadSignature`]), proof of work, not expired, and
    /// lifetime within the limit. Quotas and rates are the caller's
    /// ([`Limits::check_quota`]).
    pub fn verify(&self, now: u64, limits: &Limits) -> Result<(), ItemError> {
        let max = limits.max_item_bytes.min(MAX_ITEM_BYTES);
        if self.sealed.is_empty() {
            return Err(ItemError::Empty);
        }
        if self.sealed.len() > max {
            return Err(ItemError::TooLarge {
                found: self.sealed.len(),
                max,
            });
        }
        let header = self.header();
        verify_ed25519(
            &self.one_time_key,
            &signed_item(&header, self.pow_nonce),
            &self.signature,
        )
        .map_err(|()| ItemError::BadSignature)?;
        let found = leading_zero_bits(&pow_hash(&header, self.pow_nonce));
        if found < u32::from(limits.pow_difficulty) {
            return Err(ItemError::WeakProofOfWork {
                found,
                required: limits.pow_difficulty,
            });
        }
        if self.expires <= now {
            return Err(ItemError::Expired {
                expires: self.expires,
                now,
            });
        }
        if self.expires > now.saturating_add(limits.max_ttl_secs) {
            return Err(ItemError::TtlTooLong {
                expires: self.expires,
                now,
                max: limits.max_ttl_secs,
            });
        }
        Ok(())
    }

    /// Opens the item as its recipient: checks it is addressed to
    /// `recipient`'s mailbox, opens the envelope (proving the sender), and
    /// checks the sender's stamp against the outer header. Times are not
    /// checked; an item that reached its recipient is read.
    pub fn open(&self, recipient: &AccountKeypair) -> Result<OpenedItem, OpenItemError> {
        if self.address != mailbox_address(&recipient.public()) {
            return Err(OpenItemError::WrongMailbox);
        }
        let opened = envelope::open(recipient, &self.sealed)?;
        let (stamp, content) =
            SenderStamp::unwrap(&opened.payload).map_err(OpenItemError::Stamp)?;
        stamp.check(self)?;
        Ok(OpenedItem {
            sender: opened.sender,
            item_id: self.item_id,
            expires: self.expires,
            content: content.to_vec(),
        })
    }

    /// Length of [`Self::encode`]'s output, for quota accounting.
    pub fn encoded_len(&self) -> usize {
        1 + ITEM_ID_LEN
            + ADDRESS_LEN
            + varint_len(self.expires)
            + NODE_KEY_LEN
            + varint_len(self.pow_nonce)
            + varint_len(self.sealed.len() as u64)
            + self.sealed.len()
            + SIGNATURE_LEN
    }

    /// Encodes the item; refuses sealed contents that are empty or over
    /// [`MAX_ITEM_BYTES`], as [`Self::decode`] would.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        check_range("sealed contents", self.sealed.len(), 1, MAX_ITEM_BYTES)?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(MAILBOX_VERSION);
        out.extend_from_slice(&self.item_id);
        out.extend_from_slice(&self.address);
        put_varint(&mut out, self.expires);
        out.extend_from_slice(&self.one_time_key);
        put_varint(&mut out, self.pow_nonce);
        put_bytes(&mut out, &self.sealed);
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Decodes an item, checking its structure but not its signature,
    /// work or times ([`Self::verify`] does).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, MAX_ENCODED_ITEM_BYTES)?;
        let item_id = r.array()?;
        let address = r.array()?;
        let expires = r.varint()?;
        let one_time_key = r.array()?;
        let pow_nonce = r.varint()?;
        let sealed = r.bytes("sealed contents", 1, MAX_ITEM_BYTES)?;
        let signature = r.array()?;
        r.finish()?;
        Ok(Self {
            item_id,
            address,
            expires,
            one_time_key,
            pow_nonce,
            sealed: sealed.to_vec(),
            signature,
        })
    }
}

fn check_difficulty(difficulty: u8) -> Result<(), SealItemError> {
    if difficulty > MAX_POW_DIFFICULTY {
        return Err(SealItemError::DifficultyTooHigh {
            requested: difficulty,
            max: MAX_POW_DIFFICULTY,
        });
    }
    Ok(())
}

fn pow_hash(header: &[u8; HEADER_LEN], nonce: u64) -> [u8; 32] {
    Sha256::new()
        .chain_update(header)
        .chain_update(nonce.to_be_bytes())
        .finalize()
        .into()
}

fn signed_item(header: &[u8; HEADER_LEN], nonce: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ITEM_SIG_DOMAIN.len() + HEADER_LEN + 8);
    out.extend_from_slice(ITEM_SIG_DOMAIN);
    out.extend_from_slice(header);
    out.extend_from_slice(&nonce.to_be_bytes());
    out
}

/// An item opened by its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedItem {
    /// The sender's account key, proven by the envelope's signature.
    pub sender: AccountPublicKey,
    /// The item's ID (the same inside and out).
    pub item_id: ItemId,
    /// The expiry the sender chose (the same inside and out).
    pub expires: u64,
    /// The content, as sealed.
    pub content: Vec<u8>,
}

// ------------------------------------------------------------------ stamps

/// The sender's own statement of an item's header, carried at the start of
/// the sealed payload. The envelope's signature by the sender's account key
/// covers it, so it needs no signature of its own: the recipient learns
/// that the sender chose this ID, mailbox and expiry, and
/// [`SenderStamp::check`] shows whether the outer header still says the
/// same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderStamp {
    /// The item's ID.
    pub item_id: ItemId,
    /// The recipient's mailbox address.
    pub address: MailboxAddress,
    /// The expiry, Unix seconds.
    pub expires: u64,
}

impl SenderStamp {
    /// The stamp an item's outer header implies.
    pub fn of(item: &MailboxItem) -> Self {
        Self {
            item_id: item.item_id,
            address: item.address,
            expires: item.expires,
        }
    }

    /// The payload to seal: the stamp, then `content` (at most
    /// [`MAX_CONTENT_BYTES`]).
    pub fn wrap(&self, content: &[u8]) -> Result<Vec<u8>, EncodeError> {
        check_range("content", content.len(), 0, MAX_CONTENT_BYTES)?;
        let mut out = Vec::with_capacity(MAX_STAMP_BYTES + content.len());
        out.push(MAILBOX_VERSION);
        out.extend_from_slice(&self.item_id);
        out.extend_from_slice(&self.address);
        put_varint(&mut out, self.expires);
        out.extend_from_slice(content);
        Ok(out)
    }

    /// Splits an opened payload into its stamp and the content after it.
    pub fn unwrap(payload: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let mut r = Reader::start(payload, MAX_STAMP_BYTES + MAX_CONTENT_BYTES)?;
        let stamp = Self {
            item_id: r.array()?,
            address: r.array()?,
            expires: r.varint()?,
        };
        Ok((stamp, r.rest))
    }

    /// Checks that `item`'s outer header says what the sender stamped.
    pub fn check(&self, item: &MailboxItem) -> Result<(), OpenItemError> {
        let field = if self.item_id != item.item_id {
            "item ID"
        } else if self.address != item.address {
            "mailbox address"
        } else if self.expires != item.expires {
            "expiry"
        } else {
            return Ok(());
        };
        Err(OpenItemError::StampMismatch { field })
    }
}

// ---------------------------------------------------------------- receipts

/// A volunteer's signed statement that it received an item at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessReceipt {
    /// The item received.
    pub item_id: ItemId,
    /// The volunteer's libp2p Ed25519 public key (32 bytes).
    pub volunteer: NodeKey,
    /// When, in milliseconds since the Unix epoch by the volunteer's clock.
    pub received_at: u64,
    /// Ed25519 signature by the volunteer's node key.
    pub signature: [u8; SIGNATURE_LEN],
}

impl WitnessReceipt {
    /// Signs a receipt with the volunteer's node key, which must be
    /// Ed25519 (as every Kith node key is).
    pub fn sign(
        node: &DeviceKeypair,
        item_id: ItemId,
        received_at: u64,
    ) -> Result<Self, ReceiptError> {
        let volunteer = node_key(node)?;
        let mut receipt = Self {
            item_id,
            volunteer,
            received_at,
            signature: [0u8; SIGNATURE_LEN],
        };
        let signature = node
            .libp2p()
            .sign(&receipt.signed_bytes())
            .map_err(|_| ReceiptError::NotEd25519)?;
        receipt.signature = signature.try_into().map_err(|_| ReceiptError::NotEd25519)?;
        Ok(receipt)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECEIPT_DOMAIN.len() + ITEM_ID_LEN + NODE_KEY_LEN + 8);
        out.extend_from_slice(RECEIPT_DOMAIN);
        out.extend_from_slice(&self.item_id);
        out.extend_from_slice(&self.volunteer);
        out.extend_from_slice(&self.received_at.to_be_bytes());
        out
    }

    /// Checks the volunteer's signature (strictly).
    pub fn verify(&self) -> Result<(), ReceiptError> {
        VerifyingKey::from_bytes(&self.volunteer).map_err(|_| ReceiptError::InvalidKey)?;
        verify_ed25519(&self.volunteer, &self.signed_bytes(), &self.signature)
            .map_err(|()| ReceiptError::BadSignature)
    }

    /// The volunteer's `PeerId`, to compare with the peer that served the
    /// receipt.
    pub fn volunteer_peer_id(&self) -> Result<PeerId, ReceiptError> {
        peer_id_of(&self.volunteer).ok_or(ReceiptError::InvalidKey)
    }

    /// Encodes the receipt.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_RECEIPT_BYTES);
        out.push(MAILBOX_VERSION);
        out.extend_from_slice(&self.item_id);
        out.extend_from_slice(&self.volunteer);
        put_varint(&mut out, self.received_at);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes a receipt without checking its signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, MAX_RECEIPT_BYTES)?;
        let receipt = Self {
            item_id: r.array()?,
            volunteer: r.array()?,
            received_at: r.varint()?,
            signature: r.array()?,
        };
        r.finish()?;
        Ok(receipt)
    }
}

/// The 32-byte Ed25519 public key of a node's libp2p keypair.
pub fn node_key(node: &DeviceKeypair) -> Result<NodeKey, ReceiptError> {
    node.libp2p()
        .public()
        .try_into_ed25519()
        .map(|key| key.to_bytes())
        .map_err(|_| ReceiptError::NotEd25519)
}

/// The `PeerId` of the node whose Ed25519 public key is `key`, or `None`
/// when the bytes are not a valid key.
pub fn peer_id_of(key: &NodeKey) -> Option<PeerId> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p_identity::PublicKey::from(key).to_peer_id())
}

/// How far a message's send time can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitnessedTime {
    /// Enough witnesses agree with the sender's time; it is shown as
    /// witnessed.
    Witnessed(u64),
    /// The witnesses do not bear the sender's time out; this is the median
    /// of their times, to be shown instead.
    Corrected(u64),
    /// No witness: the sender's time, unconfirmed.
    Unwitnessed(u64),
}

impl WitnessedTime {
    /// The time to show, milliseconds since the Unix epoch.
    pub fn millis(&self) -> u64 {
        match *self {
            Self::Witnessed(t) | Self::Corrected(t) | Self::Unwitnessed(t) => t,
        }
    }
}

/// Judges a sender's claimed send time (`sender_time_ms`) by the receipts
/// of the volunteers that took the item.
///
/// `receipts` must already be verified and be for this item; each
/// volunteer counts once (with its earliest time). If at least half of the
/// volunteers' times lie within `tolerance_ms` of the sender's time, the
/// sender's time is [`WitnessedTime::Witnessed`]; otherwise the median of
/// the volunteers' times (the mean of the middle two for an even count) is
/// shown instead, [`WitnessedTime::Corrected`]. With the default three
/// volunteers, one lying or badly set clock changes nothing.
pub fn witnessed_time(
    sender_time_ms: u64,
    receipts: &[WitnessReceipt],
    tolerance_ms: u64,
) -> WitnessedTime {
    let mut by_volunteer: BTreeMap<NodeKey, u64> = BTreeMap::new();
    for receipt in receipts {
        let time = by_volunteer
            .entry(receipt.volunteer)
            .or_insert(receipt.received_at);
        *time = (*time).min(receipt.received_at);
    }
    let mut times: Vec<u64> = by_volunteer.into_values().collect();
    if times.is_empty() {
        return WitnessedTime::Unwitnessed(sender_time_ms);
    }
    let agreeing = times
        .iter()
        .filter(|&&t| t.abs_diff(sender_time_ms) <= tolerance_ms)
        .count();
    if agreeing * 2 >= times.len() {
        return WitnessedTime::Witnessed(sender_time_ms);
    }
    times.sort_unstable();
    let mid = times.len() / 2;
    let median = if times.len() % 2 == 1 {
        times[mid]
    } else {
        let (low, high) = (times[mid - 1], times[mid]);
        low + (high - low) / 2
    };
    WitnessedTime::Corrected(median)
}

// ------------------------------------------------------------------- fetch

/// A volunteer's challenge to a client that wants to fetch a mailbox: sign
/// this to prove you hold the account key behind the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchChallenge {
    /// The mailbox to be fetched.
    pub address: MailboxAddress,
    /// Fresh randomness from the volunteer.
    pub nonce: [u8; 32],
    /// The volunteer's libp2p Ed25519 public key, so a proof made for one
    /// volunteer is useless at another.
    pub volunteer: NodeKey,
    /// Unix seconds after which the volunteer no longer takes an answer.
    pub expires: u64,
}

impl FetchChallenge {
    /// A fresh challenge from `volunteer` for `address`, answerable for
    /// [`CHALLENGE_TTL_SECS`] from `now`.
    pub fn new(address: MailboxAddress, volunteer: NodeKey, now: u64) -> Self {
        Self {
            address,
            nonce: random_bytes(),
            volunteer,
            expires: now.saturating_add(CHALLENGE_TTL_SECS),
        }
    }

    /// The client's check before answering: the challenge is for its own
    /// mailbox, names the volunteer it is talking to, and is live.
    pub fn check(
        &self,
        address: &MailboxAddress,
        volunteer: &NodeKey,
        now: u64,
    ) -> Result<(), FetchError> {
        if &self.address != address {
            return Err(FetchError::WrongMailbox);
        }
        if &self.volunteer != volunteer {
            return Err(FetchError::WrongVolunteer);
        }
        if self.expires <= now {
            return Err(FetchError::ChallengeExpired {
                expires: self.expires,
                now,
            });
        }
        Ok(())
    }

    /// Answers the challenge with `account`'s key.
    pub fn answer(&self, account: &AccountKeypair) -> FetchProof {
        FetchProof {
            account: account.public(),
            signature: account.sign(&self.signed_bytes()),
        }
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = FETCH_DOMAIN.to_vec();
        out.extend_from_slice(&self.encode());
        out
    }

    /// Encodes the challenge.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_CHALLENGE_BYTES);
        out.push(MAILBOX_VERSION);
        out.extend_from_slice(&self.address);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.volunteer);
        put_varint(&mut out, self.expires);
        out
    }

    /// Decodes a challenge.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, MAX_CHALLENGE_BYTES)?;
        let challenge = Self {
            address: r.array()?,
            nonce: r.array()?,
            volunteer: r.array()?,
            expires: r.varint()?,
        };
        r.finish()?;
        Ok(challenge)
    }
}

/// A client's answer to a [`FetchChallenge`]: its account key and that
/// key's signature over `"kith/mailbox/v1/fetch" ‖ encoded challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProof {
    /// The account that owns the mailbox.
    pub account: AccountPublicKey,
    /// Its signature over the challenge.
    pub signature: Signature,
}

impl FetchProof {
    /// The volunteer's check at Unix time `now`: the challenge (one the
    /// volunteer issued and still holds) is live, `account` hashes to its
    /// address, and the signature is over it.
    pub fn verify(&self, challenge: &FetchChallenge, now: u64) -> Result<(), FetchError> {
        if challenge.expires <= now {
            return Err(FetchError::ChallengeExpired {
                expires: challenge.expires,
                now,
            });
        }
        if mailbox_address(&self.account) != challenge.address {
            return Err(FetchError::WrongAccount);
        }
        self.account
            .verify(&challenge.signed_bytes(), &self.signature)
            .map_err(|_| FetchError::BadSignature)
    }

    /// Encodes the proof.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FETCH_PROOF_BYTES);
        out.push(MAILBOX_VERSION);
        out.extend_from_slice(&self.account.to_bytes());
        out.extend_from_slice(&self.signature.0);
        out
    }

    /// Decodes a proof; the account key must be a valid point.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, FETCH_PROOF_BYTES)?;
        let proof = Self {
            account: r.account_key()?,
            signature: Signature(r.array()?),
        };
        r.finish()?;
        Ok(proof)
    }
}

/// The recipient's signed acknowledgement that it has stored the named
/// items: any volunteer holding them for this mailbox deletes them.
///
/// It names no volunteer on purpose: the same acknowledgement may be shown
/// to every volunteer that holds a copy (and passed on by one that handed
/// items over). Replaying it deletes only what was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchAck {
    /// The mailbox.
    pub address: MailboxAddress,
    /// The account that owns it (its hash is `address`).
    pub account: AccountPublicKey,
    /// The items stored (1 to [`MAX_ACK_ITEMS`]).
    pub item_ids: Vec<ItemId>,
    /// The account's signature over the above.
    pub signature: Signature,
}

impl FetchAck {
    /// Acknowledges `item_ids` (1 to [`MAX_ACK_ITEMS`]) for `account`'s
    /// mailbox.
    pub fn sign(account: &AccountKeypair, item_ids: Vec<ItemId>) -> Result<Self, EncodeError> {
        check_range("acknowledged items", item_ids.len(), 1, MAX_ACK_ITEMS)?;
        let public = account.public();
        let address = mailbox_address(&public);
        let signature = account.sign(&ack_signed_bytes(&address, &item_ids));
        Ok(Self {
            address,
            account: public,
            item_ids,
            signature,
        })
    }

    /// The volunteer's check: the account owns the address and signed the
    /// list.
    pub fn verify(&self) -> Result<(), FetchError> {
        if mailbox_address(&self.account) != self.address {
            return Err(FetchError::WrongAccount);
        }
        self.account
            .verify(
                &ack_signed_bytes(&self.address, &self.item_ids),
                &self.signature,
            )
            .map_err(|_| FetchError::BadSignature)
    }

    /// Encodes the acknowledgement; refuses an empty list or more than
    /// [`MAX_ACK_ITEMS`] IDs, as [`Self::decode`] would.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        check_range("acknowledged items", self.item_ids.len(), 1, MAX_ACK_ITEMS)?;
        let mut out = Vec::with_capacity(MAX_ACK_BYTES);
        out.push(MAILBOX_VERSION);
        out.extend_from_slice(&self.address);
        out.extend_from_slice(&self.account.to_bytes());
        put_varint(&mut out, self.item_ids.len() as u64);
        for id in &self.item_ids {
            out.extend_from_slice(id);
        }
        out.extend_from_slice(&self.signature.0);
        Ok(out)
    }

    /// Decodes an acknowledgement without checking its signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::start(bytes, MAX_ACK_BYTES)?;
        let address = r.array()?;
        let account = r.account_key()?;
        let count = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
        check_range("acknowledged items", count, 1, MAX_ACK_ITEMS)?;
        let mut item_ids = Vec::with_capacity(count);
        for _ in 0..count {
            item_ids.push(r.array()?);
        }
        let signature = Signature(r.array()?);
        r.finish()?;
        Ok(Self {
            address,
            account,
            item_ids,
            signature,
        })
    }
}

fn ack_signed_bytes(address: &MailboxAddress, item_ids: &[ItemId]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(ACK_DOMAIN.len() + ADDRESS_LEN + 8 + item_ids.len() * ITEM_ID_LEN);
    out.extend_from_slice(ACK_DOMAIN);
    out.extend_from_slice(address);
    out.extend_from_slice(&(item_ids.len() as u64).to_be_bytes());
    for id in item_ids {
        out.extend_from_slice(id);
    }
    out
}

// ---------------------------------------------------------------- refusals

/// Why a volunteer refused a deposit, sent back so the sender can say
/// what happened. Encoded as [`MAILBOX_VERSION`] then postcard (variant
/// index, then the field as a varint). New reasons are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum DepositRefusal {
    /// The item is over the volunteer's size limit.
    #[error("the item is too large for this volunteer (at most {max} bytes)")]
    TooLarge {
        /// The limit, bytes of sealed contents.
        max: u64,
    },
    /// The item would live longer than the volunteer keeps items.
    #[error("the item would be kept too long (this volunteer keeps items at most {max} s)")]
    TtlTooLong {
        /// The longest lifetime, seconds.
        max: u64,
    },
    /// The item has already expired.
    #[error("the item has already expired")]
    Expired,
    /// The item's signature does not match (altered or forged).
    #[error("the item's signature does not match: it was altered or forged")]
    BadSignature,
    /// The proof of work is too weak.
    #[error("the item's proof of work is too weak ({required} bits are required)")]
    WeakProofOfWork {
        /// Bits required.
        required: u8,
    },
    /// The recipient's mailbox at this volunteer is full.
    #[error("the recipient's mailbox is full at this volunteer ({quota} bytes)")]
    MailboxFull {
        /// The per-mailbox quota, bytes.
        quota: u64,
    },
    /// The volunteer keeps no more items from anyone.
    #[error("this volunteer has no room left")]
    VolunteerFull,
    /// The sender deposits too fast.
    #[error("too many deposits: try again in {retry_after_secs} s")]
    RateLimited {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The request could not be read.
    #[error("the volunteer could not read the item")]
    Malformed,
}

impl From<&ItemError> for DepositRefusal {
    fn from(e: &ItemError) -> Self {
        match e {
            ItemError::Empty => Self::Malformed,
            ItemError::TooLarge { max, .. } => Self::TooLarge { max: *max as u64 },
            ItemError::BadSignature => Self::BadSignature,
            ItemError::WeakProofOfWork { required, .. } => Self::WeakProofOfWork {
                required: *required,
            },
            ItemError::Expired { .. } => Self::Expired,
            ItemError::TtlTooLong { max, .. } => Self::TtlTooLong { max: *max },
        }
    }
}

impl From<&DecodeError> for DepositRefusal {
    /// The refusal for an item that did not decode: too large when the
    /// input or its sealed contents are over the limit, malformed
    /// otherwise.
    fn from(e: &DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { .. } => Self::TooLarge {
                max: MAX_ITEM_BYTES as u64,
            },
            DecodeError::OutOfRange { found, max, .. } if found > max => Self::TooLarge {
                max: MAX_ITEM_BYTES as u64,
            },
            _ => Self::Malformed,
        }
    }
}

impl DepositRefusal {
    /// Encodes the refusal.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a fieldless-or-integer enum into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        postcard::to_extend(self, vec![MAILBOX_VERSION]).expect("refusal encodes")
    }

    /// Decodes a refusal. A reason this build does not know reads as
    /// malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let r = Reader::start(bytes, MAX_REFUSAL_BYTES)?;
        let (refusal, rest) = postcard::take_from_bytes::<Self>(r.rest)
            .map_err(|_| DecodeError::Malformed("not a known refusal"))?;
        Reader { rest }.finish()?;
        // Postcard also reads over-long varints (`80 00` for 0); as for
        // every mailbox value, only the one canonical encoding is taken.
        if refusal.encode() != bytes {
            return Err(DecodeError::Malformed("non-canonical varint"));
        }
        Ok(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_postcard_and_only_canonical_ones_are_read() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut mine = Vec::new();
            put_varint(&mut mine, value);
            assert_eq!(mine, postcard::to_allocvec(&value).unwrap(), "{value}");
            assert_eq!(mine.len(), varint_len(value), "{value}");
            let mut r = Reader { rest: &mine };
            assert_eq!(r.varint(), Ok(value));
            assert!(r.rest.is_empty());
        }
        let mut r = Reader {
            rest: &[0x80, 0x00],
        };
        assert_eq!(
            r.varint(),
            Err(DecodeError::Malformed("non-canonical varint"))
        );
        let mut r = Reader {
            rest: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        };
        assert!(matches!(r.varint(), Err(DecodeError::Malformed(_))));
        let mut r = Reader { rest: &[0x80] };
        assert_eq!(r.varint(), Err(DecodeError::Truncated));
    }

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        assert_eq!(leading_zero_bits(&[0x80, 0]), 0);
        assert_eq!(leading_zero_bits(&[0x01, 0xff]), 7);
        assert_eq!(leading_zero_bits(&[0, 0, 0x10]), 19);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn size_limits_are_what_the_encoders_produce_at_most() {
        let item = MailboxItem {
            item_id: [0xff; 16],
            address: [0xff; 32],
            expires: u64::MAX,
            one_time_key: [0xff; 32],
            pow_nonce: u64::MAX,
            sealed: vec![0xff; MAX_ITEM_BYTES],
            signature: [0xff; 64],
        };
        let bytes = item.encode().unwrap();
        assert_eq!(bytes.len(), MAX_ENCODED_ITEM_BYTES);
        assert_eq!(bytes.len(), item.encoded_len());
        assert_eq!(MailboxItem::decode(&bytes), Ok(item));

        let stamp = SenderStamp {
            item_id: [1; 16],
            address: [2; 32],
            expires: u64::MAX,
        };
        assert_eq!(stamp.wrap(&[]).unwrap().len(), MAX_STAMP_BYTES);

        let receipt = WitnessReceipt {
            item_id: [1; 16],
            volunteer: [2; 32],
            received_at: u64::MAX,
            signature: [3; 64],
        };
        assert_eq!(receipt.encode().len(), MAX_RECEIPT_BYTES);

        let challenge = FetchChallenge {
            address: [1; 32],
            nonce: [2; 32],
            volunteer: [3; 32],
            expires: u64::MAX,
        };
        assert_eq!(challenge.encode().len(), MAX_CHALLENGE_BYTES);

        let account = AccountKeypair::from_secret_bytes(&[7; 32]);
        let ack = FetchAck::sign(&account, vec![[9; 16]; MAX_ACK_ITEMS]).unwrap();
        assert_eq!(ack.encode().unwrap().len(), MAX_ACK_BYTES);
        assert_eq!(
            FetchChallenge::decode(&challenge.encode())
                .unwrap()
                .answer(&account)
                .encode()
                .len(),
            FETCH_PROOF_BYTES
        );

        let refusal = DepositRefusal::RateLimited {
            retry_after_secs: u64::MAX,
        };
        assert_eq!(refusal.encode().len(), MAX_REFUSAL_BYTES);
    }

    #[test]
    fn header_covers_every_field() {
        let item = MailboxItem::sign_sealed([1; 16], [2; 32], 3, vec![4; 10], &[5; 32], 0).unwrap();
        let header = item.header();
        let mut changed = Vec::new();
        let mut other = item.clone();
        other.item_id[0] ^= 1;
        changed.push(other.header());
        let mut other = item.clone();
        other.address[0] ^= 1;
        changed.push(other.header());
        let mut other = item.clone();
        other.expires += 1;
        changed.push(other.header());
        let mut other = item.clone();
        other.one_time_key[0] ^= 1;
        changed.push(other.header());
        let mut other = item.clone();
        other.sealed[0] ^= 1;
        changed.push(other.header());
        let mut other = item.clone();
        other.sealed.push(4);
        changed.push(other.header());
        for h in changed {
            assert_ne!(h, header);
        }
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let receipt = |key: u8, at: u64| WitnessReceipt {
            item_id: [0; 16],
            volunteer: [key; 32],
            received_at: at,
            signature: [0; 64],
        };
        let receipts = [receipt(1, 1_000), receipt(2, 2_000)];
        assert_eq!(
            witnessed_time(10_000, &receipts, 100),
            WitnessedTime::Corrected(1_500)
        );
        let receipts = [receipt(1, u64::MAX - 1), receipt(2, u64::MAX)];
        assert_eq!(
            witnessed_time(0, &receipts, 100),
            WitnessedTime::Corrected(u64::MAX - 1)
        );
    }
}
