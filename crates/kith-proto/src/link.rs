//! Device linking: the link code a new device shows, the proof both devices
//! give that they hold its secret, and the sealed bundle the existing device
//! hands over. No I/O: the link protocol that carries these between the two
//! devices is built on them elsewhere (`docs/devices.md`).
//!
//! Data flows like this:
//!
//! 1. The **new device** makes a [`LinkCode`] ([`LinkCode::generate`]): its
//!    own libp2p Ed25519 public key, a one-time [`LinkSecret`], an expiry
//!    [`LINK_TTL_SECS`] away and up to [`MAX_LINK_ADDRESSES`] addresses it
//!    can be dialled at. It shows the code as text (`kith-link:` and
//!    checksummed base32, [`LinkCode::to_text`]) and as a QR code
//!    ([`LinkCode::to_qr_png`] and friends).
//! 2. The **existing device** reads it ([`LinkCode::parse`],
//!    [`LinkCode::read_qr_image`]), refuses it if expired
//!    ([`LinkCode::check`]), and dials the new device's `PeerId`
//!    ([`LinkCode::peer_id`]). Noise authenticates that `PeerId`, so the
//!    existing device knows it talks to the device that made the code.
//! 3. Over that connection each side sends a fresh nonce, then a
//!    [`link_proof`] (HMAC-SHA256 under the secret, bound to both `PeerId`s,
//!    both nonces and its own [`LinkRole`]); each checks the other's with
//!    [`verify_link_proof`] in constant time.
//! 4. The existing device seals a [`LinkBundle`] — the account key, nospam,
//!    display name, the next [`SignedDeviceList`] naming the new device, and
//!    an opaque op-log batch — under a key derived from the secret
//!    ([`LinkBundle::seal`]); the new device opens and checks it
//!    ([`LinkBundle::open`]).
//!
//! Every decoder here has a size limit checked before anything is read or
//! allocated and returns a typed error; a mistyped link code is named as a
//! typo (CRC-32C checksum) the way a mistyped Kith ID is. Secrets never
//! print and are zeroized when dropped.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use image::GrayImage;
use libp2p_identity::PeerId;
use qrcode::{EcLevel, QrCode};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::base32;
use crate::devices::{self, MAX_LIST_BYTES, Reader, SignedDeviceList, VerifyError};
use crate::id::{KITH_ID_TEXT_LEN, KithId, Nospam};
use crate::identity::{ACCOUNT_SECRET_LEN, AccountKeypair, DeviceKeypair};
use crate::qr::{self, MAX_IMAGE_SIDE, RenderError};
use crate::random::random_bytes;
use crate::wire::{FieldError, MAX_DISPLAY_NAME_BYTES};

/// The link format version this build reads and writes: the first byte of
/// link codes and of sealed and opened bundles.
pub const LINK_VERSION: u8 = 1;
/// How long a link code lives, seconds.
pub const LINK_TTL_SECS: u64 = 300;
/// How far the existing device's clock may be behind the new device's: a
/// code whose expiry is more than [`LINK_TTL_SECS`] plus this after the
/// reader's now was not made by Kith (or by a badly set clock) and is
/// refused.
pub const LINK_CLOCK_SKEW_SECS: u64 = 300;
/// The text form's prefix.
pub const LINK_PREFIX: &str = "kith-link:";
/// Most addresses one link code carries.
pub const MAX_LINK_ADDRESSES: usize = 4;
/// Longest address in a link code, in bytes of its binary multiaddr form.
pub const MAX_LINK_ADDRESS_BYTES: usize = 64;
/// Length of the one-time secret, the nonces and the proofs.
pub const LINK_SECRET_LEN: usize = 32;
/// Length of each side's nonce in the proof exchange.
pub const LINK_NONCE_LEN: usize = 32;
/// Length of a [`link_proof`].
pub const LINK_PROOF_LEN: usize = 32;
/// Smallest binary link code: no addresses.
pub const MIN_CODE_BYTES: usize = 1 + 32 + LINK_SECRET_LEN + 8 + 1 + CHECKSUM_LEN;
/// Largest binary link code: [`MAX_LINK_ADDRESSES`] of the longest kind.
pub const MAX_CODE_BYTES: usize =
    MIN_CODE_BYTES + MAX_LINK_ADDRESSES * (1 + MAX_LINK_ADDRESS_BYTES);
/// Longest text [`LinkCode::parse`] looks at; anything longer is refused
/// before it is copied or scanned.
pub const MAX_LINK_INPUT_LEN: usize = 2048;
/// Largest op-log batch a bundle carries, in bytes.
pub const MAX_SYNC_BYTES: usize = 4 * 1024 * 1024;
/// Largest opened bundle: version, account secret, nospam, display name,
/// device list and op-log batch with their lengths.
pub const MAX_BUNDLE_BYTES: usize = 1
    + ACCOUNT_SECRET_LEN
    + 4
    + 1
    + MAX_DISPLAY_NAME_BYTES
    + 2
    + MAX_LIST_BYTES
    + 4
    + MAX_SYNC_BYTES;
/// Largest sealed bundle [`LinkBundle::open`] accepts: version, nonce,
/// the largest opened bundle and the tag. Longer input is refused unread.
pub const MAX_SEALED_BUNDLE_BYTES: usize = SEALED_OVERHEAD + MAX_BUNDLE_BYTES;

const CHECKSUM_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

const PROOF_DOMAIN: &[u8] = b"kith/link/v1/proof";
const BUNDLE_DOMAIN: &[u8] = b"kith/link/v1/bundle";

/// CRC-32C (Castagnoli): degree 32, so any one mistyped character (a burst
/// of at most 5 bits) and any swap of neighbours (at most 10 bits) is always
/// caught, at every code length.
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

// ---------------------------------------------------------------- errors

/// Why a link code could not be read, made or used. Each message tells the
/// person what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkCodeError {
    /// Nothing was given.
    #[error("no link code given")]
    Empty,
    /// More text than any link code could be; not looked at further.
    #[error("that is far too long to be a link code (more than {max} bytes)")]
    TooLong {
        /// The most input looked at.
        max: usize,
    },
    /// A Kith ID was given where a link code was expected.
    #[error(
        "that is a Kith ID, not a link code: on the new device, choose to link it to an existing account and enter the code it shows"
    )]
    KithId,
    /// A character that is not part of the code alphabet.
    #[error(
        "'{character}' (character {position}) cannot appear in a link code: codes use digits and the letters A-Z except I, L, O and U"
    )]
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its 1-based position among the code's characters.
        position: usize,
    },
    /// A number of characters no link code has: something was cut off or
    /// added.
    #[error(
        "a link code has {min} to {max} characters but this has {found}: part of it is missing or extra"
    )]
    WrongLength {
        /// Characters given.
        found: usize,
        /// The fewest a code has.
        min: usize,
        /// The most a code has.
        max: usize,
    },
    /// Binary input of a size no link code has.
    #[error("a link code is {min} to {max} bytes, this is {found}")]
    WrongSize {
        /// Bytes given.
        found: usize,
        /// The least.
        min: usize,
        /// The most.
        max: usize,
    },
    /// The checksum does not match: a character was mistyped, left out or
    /// added.
    #[error(
        "checksum mismatch: this link code has a typo (or a character too many or too few), so copy it again"
    )]
    ChecksumMismatch,
    /// A well-formed code of a version this build does not know.
    #[error(
        "this is a version {found} link code, but this Kith only knows version {LINK_VERSION}: update Kith on both devices"
    )]
    UnknownVersion {
        /// The version the code carries.
        found: u8,
    },
    /// The checksum matches but the contents do not form a code: it was not
    /// made by Kith.
    #[error("this link code was not made by Kith ({0})")]
    Malformed(&'static str),
    /// The device key in the code is not a valid Ed25519 key.
    #[error("this link code holds an invalid device key; it was not made by Kith")]
    InvalidDeviceKey,
    /// The device key to put in a code is not an Ed25519 key.
    #[error("only Ed25519 device keys can be linked")]
    NotEd25519,
    /// More than [`MAX_LINK_ADDRESSES`] addresses.
    #[error("a link code carries at most {max} addresses, not {found}")]
    TooManyAddresses {
        /// Addresses given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// An address that is empty or over [`MAX_LINK_ADDRESS_BYTES`].
    #[error("address {index} is {found} bytes; addresses in a link code are 1 to {max} bytes")]
    AddressLength {
        /// 0-based position.
        index: usize,
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The code has expired.
    #[error("this link code expired (at {expires}, now {now}): make a new one on the new device")]
    Expired {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// The code claims to live far longer than Kith's codes do.
    #[error(
        "this link code claims to stay valid until {expires}, more than {max} s after now ({now}): check both devices' clocks and make a new code"
    )]
    ExpiryTooFar {
        /// Its expiry, Unix seconds.
        expires: u64,
        /// The time of the check.
        now: u64,
        /// The most allowed, seconds from now.
        max: u64,
    },
}

/// Why the other device's link proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof was not made with this code's secret for this connection,
    /// this exchange and the other role.
    #[error(
        "the other device does not hold this link code's secret (a wrong or old code, or another link attempt)"
    )]
    Mismatch,
}

/// Why a link bundle could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Over [`MAX_SEALED_BUNDLE_BYTES`]; refused unread.
    #[error("link bundle of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Too short to hold even an empty bundle.
    #[error("link bundle of {found} bytes is too short (at least {min} are needed)")]
    TooShort {
        /// Bytes given.
        found: usize,
        /// The minimum.
        min: usize,
    },
    /// A link format version this build does not know.
    #[error(
        "link bundle version {found} is not supported (this build reads {LINK_VERSION}): update Kith on both devices"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// Not sealed with this link secret for this device, or altered.
    #[error(
        "the link bundle could not be opened: it was sealed with another link secret or for another device, or altered on the way"
    )]
    Decrypt,
    /// The cipher failed while sealing.
    #[error("the link bundle could not be encrypted")]
    Encrypt,
    /// The opened bundle ends early.
    #[error("truncated link bundle")]
    Truncated,
    /// The opened bundle has bytes after its end.
    #[error("{count} unexpected bytes after the link bundle")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The display name breaks its rules.
    #[error("invalid display name: {0}")]
    DisplayName(FieldError),
    /// The display name is not UTF-8.
    #[error("the display name is not UTF-8")]
    DisplayNameNotUtf8,
    /// The op-log batch is over [`MAX_SYNC_BYTES`].
    #[error("the history to hand over is {found} bytes, over the {max}-byte limit")]
    SyncTooLarge {
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The device list in the bundle does not decode.
    #[error("the bundle's device list is invalid: {0}")]
    DeviceListEncoding(devices::DecodeError),
    /// The device list is not signed by the account handed over.
    #[error("the bundle's device list is not the account's: {0}")]
    DeviceList(VerifyError),
    /// The device list does not name the new device.
    #[error("the bundle's device list does not include the new device")]
    NewDeviceNotListed,
}

impl From<qr::ScanFault> for QrReadError {
    fn from(fault: qr::ScanFault) -> Self {
        match fault {
            qr::ScanFault::FileTooLarge { found, max } => Self::FileTooLarge { found, max },
            qr::ScanFault::NotAnImage(why) => Self::NotAnImage(why),
            qr::ScanFault::ImageTooLarge { width, height } => Self::ImageTooLarge { width, height },
            qr::ScanFault::NoQrCode => Self::NoQrCode,
            qr::ScanFault::Unreadable => Self::Unreadable,
        }
    }
}

/// Why no link code could be read from an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QrReadError {
    /// The file is larger than [`crate::qr::MAX_IMAGE_BYTES`].
    #[error("the image file is too large ({found} bytes; at most {max} are read)")]
    FileTooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Not an image in a format Kith reads (PNG or JPEG), or a damaged one.
    #[error("this is not a PNG or JPEG image Kith can read: {0}")]
    NotAnImage(String),
    /// The picture is wider or taller than [`MAX_IMAGE_SIDE`].
    #[error("the image is too large ({width}x{height} pixels; at most {MAX_IMAGE_SIDE} on a side)")]
    ImageTooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// No QR code was found in the picture.
    #[error("no QR code was found in the image")]
    NoQrCode,
    /// A QR code was found but could not be decoded.
    #[error("a QR code was found but could not be read; try a sharper or larger image")]
    Unreadable,
    /// The QR code holds text that is not a link code.
    #[error("the QR code does not hold a link code: {0}")]
    NotLinkCode(LinkCodeError),
}

// ---------------------------------------------------------------- secret

/// The one-time secret of a link code: 32 random bytes. Zeroized when
/// dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct LinkSecret([u8; LINK_SECRET_LEN]);

impl LinkSecret {
    /// A fresh secret from the operating system's randomness.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// A secret from known bytes (stored state, tests).
    pub fn from_bytes(bytes: [u8; LINK_SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8; LINK_SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSecret(…)")
    }
}

// ------------------------------------------------------------------ code

/// What a new device shows so an existing device can link it: its device
/// key, a one-time secret, an expiry and where to dial it.
///
/// The code holds the secret, so it is as sensitive as the secret: the
/// secret wipes itself when the code is dropped, `Debug` leaves it out, and
/// there is no `Display` (use [`Self::to_text`] where the code is meant to
/// be shown).
#[derive(Clone)]
pub struct LinkCode {
    device_key: [u8; 32],
    peer_id: PeerId,
    secret: LinkSecret,
    expires: u64,
    addresses: Vec<Vec<u8>>,
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCode")
            .field("peer_id", &self.peer_id())
            .field("expires", &self.expires)
            .field("addresses", &self.addresses.len())
            .finish_non_exhaustive()
    }
}

impl LinkCode {
    /// A fresh code for `device`, dialable at `addresses` (binary
    /// multiaddrs, at most [`MAX_LINK_ADDRESSES`] of at most
    /// [`MAX_LINK_ADDRESS_BYTES`] each), expiring [`LINK_TTL_SECS`] after
    /// `now`. Returns the code to show and the secret the new device keeps
    /// to check the existing device's proof and open the bundle.
    pub fn generate(
        device: &DeviceKeypair,
        addresses: Vec<Vec<u8>>,
        now: u64,
    ) -> Result<(Self, LinkSecret), LinkCodeError> {
        let secret = LinkSecret::random();
        let code = Self::generate_with(device, secret.clone(), addresses, now)?;
        Ok((code, secret))
    }

    /// [`Self::generate`] with a given secret. Deterministic: the same
    /// inputs give the same code.
    pub fn generate_with(
        device: &DeviceKeypair,
        secret: LinkSecret,
        addresses: Vec<Vec<u8>>,
        now: u64,
    ) -> Result<Self, LinkCodeError> {
        let public = device.libp2p().public();
        let device_key = public
            .clone()
            .try_into_ed25519()
            .map_err(|_| LinkCodeError::NotEd25519)?
            .to_bytes();
        check_addresses(&addresses)?;
        Ok(Self {
            device_key,
            peer_id: public.to_peer_id(),
            secret,
            expires: now.saturating_add(LINK_TTL_SECS),
            addresses,
        })
    }

    /// The new device's 32-byte Ed25519 public key.
    pub fn device_key(&self) -> &[u8; 32] {
        &self.device_key
    }

    /// The new device's `PeerId`: the peer to dial, and the device the next
    /// device list must name.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The one-time secret.
    pub fn secret(&self) -> &LinkSecret {
        &self.secret
    }

    /// When the code stops being accepted, Unix seconds.
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// Where the new device said it can be dialled (binary multiaddrs,
    /// not validated beyond their length).
    pub fn addresses(&self) -> &[Vec<u8>] {
        &self.addresses
    }

    /// Whether the code may still be used at Unix time `now`: not expired,
    /// and not claiming to live longer than [`LINK_TTL_SECS`] plus
    /// [`LINK_CLOCK_SKEW_SECS`]. The new device, which made the code, is
    /// the one that must enforce the expiry: it refuses proofs after it.
    pub fn check(&self, now: u64) -> Result<(), LinkCodeError> {
        if self.expires <= now {
            return Err(LinkCodeError::Expired {
                expires: self.expires,
                now,
            });
        }
        let max = LINK_TTL_SECS + LINK_CLOCK_SKEW_SECS;
        if self.expires > now.saturating_add(max) {
            return Err(LinkCodeError::ExpiryTooFar {
                expires: self.expires,
                now,
                max,
            });
        }
        Ok(())
    }

    /// The binary form: version, device key, secret, expiry, addresses and
    /// CRC-32C (layout in `docs/devices.md`). Zeroized when dropped, as it
    /// holds the secret.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(MAX_CODE_BYTES));
        out.push(LINK_VERSION);
        out.extend_from_slice(&self.device_key);
        out.extend_from_slice(self.secret.as_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.push(u8::try_from(self.addresses.len()).unwrap_or(u8::MAX));
        for address in &self.addresses {
            out.push(u8::try_from(address.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(address);
        }
        let checksum = CRC.checksum(&out);
        out.extend_from_slice(&checksum.to_be_bytes());
        out
    }

    /// Reads the binary form, checking size, checksum, version and then
    /// the fields, in that order (a damaged version byte reads as a typo).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LinkCodeError> {
        if bytes.len() < MIN_CODE_BYTES || bytes.len() > MAX_CODE_BYTES {
            return Err(LinkCodeError::WrongSize {
                found: bytes.len(),
                min: MIN_CODE_BYTES,
                max: MAX_CODE_BYTES,
            });
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if CRC.checksum(body).to_be_bytes() != checksum {
            return Err(LinkCodeError::ChecksumMismatch);
        }
        if body[0] != LINK_VERSION {
            return Err(LinkCodeError::UnknownVersion { found: body[0] });
        }
        let short = LinkCodeError::Malformed("it ends early");
        let mut r = Reader::new(&body[1..]);
        let device_key: [u8; 32] = r.array().ok_or(short.clone())?;
        let secret = LinkSecret(r.array().ok_or(short.clone())?);
        let expires = r.u64().ok_or(short.clone())?;
        let count = usize::from(r.u8().ok_or(short.clone())?);
        if count > MAX_LINK_ADDRESSES {
            return Err(LinkCodeError::TooManyAddresses {
                found: count,
                max: MAX_LINK_ADDRESSES,
            });
        }
        let mut addresses = Vec::with_capacity(count);
        for index in 0..count {
            let len = usize::from(r.u8().ok_or(short.clone())?);
            if len == 0 || len > MAX_LINK_ADDRESS_BYTES {
                return Err(LinkCodeError::AddressLength {
                    index,
                    found: len,
                    max: MAX_LINK_ADDRESS_BYTES,
                });
            }
            addresses.push(r.take(len).ok_or(short.clone())?.to_vec());
        }
        if r.remaining() > 0 {
            return Err(LinkCodeError::Malformed("bytes after its end"));
        }
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&device_key)
            .map_err(|_| LinkCodeError::InvalidDeviceKey)?;
        Ok(Self {
            device_key,
            peer_id: libp2p_identity::PublicKey::from(key).to_peer_id(),
            secret,
            expires,
            addresses,
        })
    }

    /// The text form: [`LINK_PREFIX`] and the binary form in the Kith ID
    /// alphabet (Crockford base32, upper case, no separators).
    pub fn to_text(&self) -> String {
        format!("{LINK_PREFIX}{}", base32::encode(&self.to_bytes()))
    }

    /// Parses a code from its text form.
    ///
    /// Leading and trailing whitespace, the `kith-link:` prefix (any case,
    /// optionally followed by `//`), and spaces or hyphens between
    /// characters are ignored; lower case and the look-alikes `O`, `I` and
    /// `L` are read as Kith IDs read them. Errors, in the order they are
    /// checked: too long, empty, a Kith ID instead of a code, a character
    /// outside the alphabet, a wrong number of characters, a checksum
    /// mismatch (a typo), an unknown version, and then the fields.
    pub fn parse(input: &str) -> Result<Self, LinkCodeError> {
        if input.len() > MAX_LINK_INPUT_LEN {
            return Err(LinkCodeError::TooLong {
                max: MAX_LINK_INPUT_LEN,
            });
        }
        let mut text = input.trim();
        if let Some(rest) = strip_prefix_ignore_case(text, LINK_PREFIX) {
            text = rest.strip_prefix("//").unwrap_or(rest);
        } else if strip_prefix_ignore_case(text, "kith:").is_some() {
            return Err(LinkCodeError::KithId);
        }
        if text.is_empty() {
            return Err(LinkCodeError::Empty);
        }
        let mut values = Vec::with_capacity(text.len());
        for c in text.chars().filter(|c| !is_separator(*c)) {
            match base32::symbol_value(c) {
                Some(v) => values.push(v),
                None => {
                    return Err(LinkCodeError::InvalidCharacter {
                        character: c,
                        position: values.len() + 1,
                    });
                }
            }
        }
        if values.len() == KITH_ID_TEXT_LEN && KithId::parse(text).is_ok() {
            return Err(LinkCodeError::KithId);
        }
        let (min, max) = (
            base32::encoded_len(MIN_CODE_BYTES),
            base32::encoded_len(MAX_CODE_BYTES),
        );
        let bytes_len = values.len() * 5 / 8;
        if values.len() < min
            || values.len() > max
            || base32::encoded_len(bytes_len) != values.len()
        {
            return Err(LinkCodeError::WrongLength {
                found: values.len(),
                min,
                max,
            });
        }
        // Non-zero padding bits in the last character can only be a typo.
        let bytes = decode_base32(&values).ok_or(LinkCodeError::ChecksumMismatch)?;
        Self::from_bytes(&bytes)
    }

    fn qr(&self) -> Result<QrCode, RenderError> {
        // Upper case fits QR's compact alphanumeric mode (digits, A-Z and
        // "-" and ":"); parsing is case-insensitive.
        let text = Zeroizing::new(self.to_text().to_ascii_uppercase());
        QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
            .map_err(|e| RenderError::Encode(e.to_string()))
    }

    /// Renders the code as a QR code in a PNG, at least `min_side` pixels
    /// wide, black on white with the standard quiet zone.
    pub fn to_qr_png(&self, min_side: u32) -> Result<Vec<u8>, RenderError> {
        qr::png_of(&self.qr()?, min_side)
    }

    /// Renders the code as a QR code in an SVG document, at least
    /// `min_side` units wide.
    pub fn to_qr_svg(&self, min_side: u32) -> Result<String, RenderError> {
        Ok(qr::svg_of(&self.qr()?, min_side))
    }

    /// Renders the code as a QR code in lines of Unicode half blocks for a
    /// terminal (light modules drawn, quiet zone included), as
    /// [`crate::qr::to_terminal`] does for Kith IDs.
    pub fn to_qr_terminal(&self) -> Result<String, RenderError> {
        Ok(qr::terminal_of(&self.qr()?))
    }

    /// Finds the first QR code in a PNG or JPEG image that holds a link
    /// code, with the same limits on file size and dimensions as
    /// [`crate::qr::read_image`].
    pub fn read_qr_image(bytes: &[u8]) -> Result<Self, QrReadError> {
        Self::read_qr_gray(qr::load_gray(bytes)?)
    }

    /// Finds the first QR code in a greyscale picture that holds a link
    /// code.
    pub fn read_qr_gray(gray: GrayImage) -> Result<Self, QrReadError> {
        let texts = qr::scan_texts(gray)?;
        let mut first_error = None;
        for text in &texts {
            match Self::parse(text) {
                Ok(code) => return Ok(code),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.map_or(QrReadError::Unreadable, QrReadError::NotLinkCode))
    }
}

fn check_addresses(addresses: &[Vec<u8>]) -> Result<(), LinkCodeError> {
    if addresses.len() > MAX_LINK_ADDRESSES {
        return Err(LinkCodeError::TooManyAddresses {
            found: addresses.len(),
            max: MAX_LINK_ADDRESSES,
        });
    }
    for (index, address) in addresses.iter().enumerate() {
        if address.is_empty() || address.len() > MAX_LINK_ADDRESS_BYTES {
            return Err(LinkCodeError::AddressLength {
                index,
                found: address.len(),
                max: MAX_LINK_ADDRESS_BYTES,
            });
        }
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn is_separator(c: char) -> bool {
    c == '-' || c.is_whitespace()
}

/// Decodes base32 symbol values (already checked against the alphabet)
/// whose count is `encoded_len` of some byte length. Returns `None` when
/// the padding bits of the last symbol are not zero, which no encoder
/// produces: a mistyped final character.
fn decode_base32(values: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let len = values.len() * 5 / 8;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    let mut buffer: u16 = 0;
    let mut bits = 0u32;
    for &value in values {
        buffer = (buffer << 5) | u16::from(value & 0x1f);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    (buffer == 0 && out.len() == len && base32::encoded_len(len) == values.len()).then_some(out)
}

// ----------------------------------------------------------------- proofs

/// Which side of a link a proof speaks for. The role is part of what is
/// authenticated, so one side's proof cannot be sent back as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkRole {
    /// The device already on the account, which read the code.
    Existing,
    /// The device being linked, which showed the code.
    New,
}

impl LinkRole {
    fn byte(self) -> u8 {
        match self {
            Self::Existing => 1,
            Self::New => 2,
        }
    }
}

/// The proof that the `role` side holds `secret`, for the connection
/// between `existing_peer` and `new_peer` (the `PeerId`s Noise
/// authenticated) and the nonces each side sent for this exchange:
///
/// ```text
/// HMAC-SHA256(key = secret, "kith/link/v1/proof" ‖ role (1: existing, 2: new)
///             ‖ len ‖ existing_peer ‖ len ‖ new_peer ‖ nonce_existing (32) ‖ nonce_new (32))
/// ```
///
/// Binding the `PeerId`s means a proof relayed from another connection is
/// refused; binding both nonces means an old proof cannot be replayed.
pub fn link_proof(
    secret: &LinkSecret,
    role: LinkRole,
    existing_peer: &PeerId,
    new_peer: &PeerId,
    nonce_existing: &[u8; LINK_NONCE_LEN],
    nonce_new: &[u8; LINK_NONCE_LEN],
) -> [u8; LINK_PROOF_LEN] {
    proof_mac(
        secret,
        role,
        existing_peer,
        new_peer,
        nonce_existing,
        nonce_new,
    )
    .finalize()
    .into_bytes()
    .into()
}

/// Checks the other side's proof, comparing in constant time.
pub fn verify_link_proof(
    secret: &LinkSecret,
    role: LinkRole,
    existing_peer: &PeerId,
    new_peer: &PeerId,
    nonce_existing: &[u8; LINK_NONCE_LEN],
    nonce_new: &[u8; LINK_NONCE_LEN],
    proof: &[u8],
) -> Result<(), ProofError> {
    proof_mac(
        secret,
        role,
        existing_peer,
        new_peer,
        nonce_existing,
        nonce_new,
    )
    .verify_slice(proof)
    .map_err(|_| ProofError::Mismatch)
}

fn proof_mac(
    secret: &LinkSecret,
    role: LinkRole,
    existing_peer: &PeerId,
    new_peer: &PeerId,
    nonce_existing: &[u8; LINK_NONCE_LEN],
    nonce_new: &[u8; LINK_NONCE_LEN],
) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(PROOF_DOMAIN);
    mac.update(&[role.byte()]);
    for peer in [existing_peer, new_peer] {
        // PeerIds are multihashes of at most 64 bytes.
        let bytes = peer.to_bytes();
        mac.update(&[u8::try_from(bytes.len()).unwrap_or(u8::MAX)]);
        mac.update(&bytes);
    }
    mac.update(nonce_existing);
    mac.update(nonce_new);
    mac
}

// ----------------------------------------------------------------- bundle

/// What the existing device hands the new one: everything needed to act as
/// the account. Sealed under the link secret ([`Self::seal`]).
///
/// The account key zeroizes itself when dropped and `Debug` shows only its
/// public half.
pub struct LinkBundle {
    /// The account keypair.
    pub account: AccountKeypair,
    /// The account's current nospam.
    pub nospam: Nospam,
    /// The account's display name (the rules of
    /// [`crate::wire::FriendRequest`] display names).
    pub display_name: String,
    /// The next device list, signed by the account and naming the new
    /// device.
    pub device_list: SignedDeviceList,
    /// The op-log batch (contacts, friend-request decisions, history) as
    /// another crate encodes it; at most [`MAX_SYNC_BYTES`].
    pub sync: Vec<u8>,
}

impl fmt::Debug for LinkBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkBundle")
            .field("account", &self.account)
            .field("nospam", &self.nospam)
            .field("display_name", &self.display_name)
            .field("device_list_seq", &self.device_list.claimed_seq())
            .field("sync_len", &self.sync.len())
            .finish()
    }
}

impl LinkBundle {
    /// Checks the bundle as both sides must: display name and history
    /// within their limits, the device list signed by the account handed
    /// over, and naming `new_device`.
    pub fn check(&self, new_device: &PeerId) -> Result<(), BundleError> {
        check_display_name(&self.display_name)?;
        if self.sync.len() > MAX_SYNC_BYTES {
            return Err(BundleError::SyncTooLarge {
                found: self.sync.len(),
                max: MAX_SYNC_BYTES,
            });
        }
        let list = self
            .device_list
            .verify(&self.account.public())
            .map_err(BundleError::DeviceList)?;
        if !list.contains(new_device) {
            return Err(BundleError::NewDeviceNotListed);
        }
        Ok(())
    }

    /// Checks the bundle ([`Self::check`]) and seals it for `new_device`
    /// under `secret`, with a fresh random nonce.
    pub fn seal(&self, secret: &LinkSecret, new_device: &PeerId) -> Result<Vec<u8>, BundleError> {
        self.seal_with(secret, new_device, random_bytes())
    }

    /// [`Self::seal`] with a given nonce. Deterministic; a nonce must never
    /// be used twice with the same secret and device.
    pub fn seal_with(
        &self,
        secret: &LinkSecret,
        new_device: &PeerId,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, BundleError> {
        self.check(new_device)?;
        let plain = self.encode_plain();
        let sealed = bundle_cipher(secret, new_device)
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &[LINK_VERSION],
                },
            )
            .map_err(|_| BundleError::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(LINK_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a sealed bundle as `new_device`, which holds `secret`, and
    /// checks it ([`Self::check`]). The size is checked before anything
    /// is read or allocated.
    pub fn open(
        sealed: &[u8],
        secret: &LinkSecret,
        new_device: &PeerId,
    ) -> Result<Self, BundleError> {
        if sealed.len() > MAX_SEALED_BUNDLE_BYTES {
            return Err(BundleError::TooLarge {
                found: sealed.len(),
                max: MAX_SEALED_BUNDLE_BYTES,
            });
        }
        let too_short = BundleError::TooShort {
            found: sealed.len(),
            min: SEALED_OVERHEAD,
        };
        let (&version, rest) = sealed.split_first().ok_or(too_short.clone())?;
        if version != LINK_VERSION {
            return Err(BundleError::UnknownVersion { found: version });
        }
        if sealed.len() < SEALED_OVERHEAD {
            return Err(too_short);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let plain = Zeroizing::new(
            bundle_cipher(secret, new_device)
                .decrypt(
                    &XNonce::from(nonce_bytes),
                    Payload {
                        msg: ciphertext,
                        aad: &[LINK_VERSION],
                    },
                )
                .map_err(|_| BundleError::Decrypt)?,
        );
        let bundle = Self::decode_plain(&plain)?;
        bundle.check(new_device)?;
        Ok(bundle)
    }

    /// The opened form (layout in `docs/devices.md`). Valid only for a
    /// checked bundle (lengths are written at fixed widths).
    fn encode_plain(&self) -> Zeroizing<Vec<u8>> {
        let list = self.device_list.encode();
        let mut out = Zeroizing::new(Vec::with_capacity(
            1 + ACCOUNT_SECRET_LEN
                + 4
                + 1
                + self.display_name.len()
                + 2
                + list.len()
                + 4
                + self.sync.len(),
        ));
        out.push(LINK_VERSION);
        out.extend_from_slice(self.account.secret_bytes().as_slice());
        out.extend_from_slice(&self.nospam.0);
        out.push(u8::try_from(self.display_name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.display_name.as_bytes());
        out.extend_from_slice(&u16::try_from(list.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&list);
        out.extend_from_slice(
            &u32::try_from(self.sync.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.sync);
        out
    }

    /// Reads the opened form, checking every length before the bytes behind
    /// it; does not check the device list's signature ([`Self::check`]
    /// does).
    fn decode_plain(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge {
                found: bytes.len(),
                max: MAX_BUNDLE_BYTES,
            });
        }
        let t = BundleError::Truncated;
        let mut r = Reader::new(bytes);
        let version = r.u8().ok_or(t.clone())?;
        if version != LINK_VERSION {
            return Err(BundleError::UnknownVersion { found: version });
        }
        let secret = Zeroizing::new(r.array::<ACCOUNT_SECRET_LEN>().ok_or(t.clone())?);
        let account = AccountKeypair::from_secret_bytes(&secret);
        let nospam = Nospam(r.array().ok_or(t.clone())?);
        let name_len = usize::from(r.u8().ok_or(t.clone())?);
        if name_len > MAX_DISPLAY_NAME_BYTES {
            return Err(BundleError::DisplayName(FieldError::TooLong {
                field: "display name",
                found: name_len,
                max: MAX_DISPLAY_NAME_BYTES,
            }));
        }
        let name = r.take(name_len).ok_or(t.clone())?;
        let display_name = std::str::from_utf8(name)
            .map_err(|_| BundleError::DisplayNameNotUtf8)?
            .to_owned();
        let list_len = usize::from(r.u16().ok_or(t.clone())?);
        if list_len > MAX_LIST_BYTES {
            return Err(BundleError::DeviceListEncoding(
                devices::DecodeError::TooLarge {
                    found: list_len,
                    max: MAX_LIST_BYTES,
                },
            ));
        }
        let list = r.take(list_len).ok_or(t.clone())?;
        let device_list =
            SignedDeviceList::decode(list).map_err(BundleError::DeviceListEncoding)?;
        let sync_len = usize::try_from(r.u32().ok_or(t.clone())?).unwrap_or(usize::MAX);
        if sync_len > MAX_SYNC_BYTES {
            return Err(BundleError::SyncTooLarge {
                found: sync_len,
                max: MAX_SYNC_BYTES,
            });
        }
        let sync = r.take(sync_len).ok_or(t)?.to_vec();
        if r.remaining() > 0 {
            return Err(BundleError::TrailingBytes {
                count: r.remaining(),
            });
        }
        Ok(Self {
            account,
            nospam,
            display_name,
            device_list,
            sync,
        })
    }
}

fn check_display_name(name: &str) -> Result<(), BundleError> {
    let field = "display name";
    if name.len() > MAX_DISPLAY_NAME_BYTES {
        return Err(BundleError::DisplayName(FieldError::TooLong {
            field,
            found: name.len(),
            max: MAX_DISPLAY_NAME_BYTES,
        }));
    }
    if name.trim().is_empty() {
        return Err(BundleError::DisplayName(FieldError::Empty { field }));
    }
    if name.chars().any(char::is_control) {
        return Err(BundleError::DisplayName(FieldError::ControlCharacter {
            field,
        }));
    }
    Ok(())
}

/// The bundle cipher for `new_device` under `secret`:
/// `key = HKDF-SHA256(salt = "kith/link/v1/bundle", ikm = secret,
/// info = new device's PeerId bytes)`.
fn bundle_cipher(secret: &LinkSecret, new_device: &PeerId) -> XChaCha20Poly1305 {
    let kdf = Hkdf::<Sha256>::new(Some(BUNDLE_DOMAIN), secret.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is a valid HKDF-SHA256 output length and XChaCha20 key.
    #[allow(clippy::expect_used)]
    {
        kdf.expand(&new_device.to_bytes(), key.as_mut_slice())
            .expect("valid HKDF length");
        XChaCha20Poly1305::new_from_slice(key.as_slice()).expect("32-byte key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base32_of_every_code_length_round_trips() {
        for len in MIN_CODE_BYTES..=MAX_CODE_BYTES {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let text = base32::encode(&bytes);
            let values: Vec<u8> = text
                .chars()
                .map(|c| base32::symbol_value(c).unwrap())
                .collect();
            assert_eq!(decode_base32(&values).unwrap().as_slice(), bytes, "{len}");
        }
    }

    #[test]
    fn role_and_every_bound_input_change_the_proof() {
        let secret = LinkSecret::from_bytes([1; 32]);
        let (a, b) = (PeerId::random(), PeerId::random());
        let base = link_proof(&secret, LinkRole::New, &a, &b, &[2; 32], &[3; 32]);
        let changed = [
            link_proof(&secret, LinkRole::Existing, &a, &b, &[2; 32], &[3; 32]),
            link_proof(&secret, LinkRole::New, &b, &a, &[2; 32], &[3; 32]),
            link_proof(&secret, LinkRole::New, &a, &b, &[3; 32], &[2; 32]),
            link_proof(&secret, LinkRole::New, &a, &b, &[2; 32], &[4; 32]),
            link_proof(
                &LinkSecret::from_bytes([9; 32]),
                LinkRole::New,
                &a,
                &b,
                &[2; 32],
                &[3; 32],
            ),
        ];
        for other in changed {
            assert_ne!(other, base);
        }
        let verify = |proof: &[u8]| {
            verify_link_proof(&secret, LinkRole::New, &a, &b, &[2; 32], &[3; 32], proof)
        };
        assert_eq!(verify(&base), Ok(()));
        assert_eq!(verify(&base[..31]), Err(ProofError::Mismatch));
        assert_eq!(verify(&[]), Err(ProofError::Mismatch));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let device = DeviceKeypair::generate();
        let (code, secret) = LinkCode::generate(&device, Vec::new(), 0).unwrap();
        let hex: String = secret
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        for shown in [format!("{code:?}"), format!("{secret:?}")] {
            assert!(!shown.contains(&hex), "{shown}");
            assert!(
                !shown.contains(&format!("{:?}", secret.as_bytes())),
                "{shown}"
            );
        }
    }

    /// An opened bundle up to its op-log length, for a valid one-device
    /// list of account `[7; 32]`.
    fn plain_prefix(name: &[u8]) -> Vec<u8> {
        let account = AccountKeypair::from_secret_bytes(&[7; 32]);
        let peer =
            DeviceKeypair::from(libp2p_identity::Keypair::ed25519_from_bytes([8; 32]).unwrap())
                .peer_id();
        let list = crate::DeviceList::sign(
            &account,
            1,
            0,
            vec![crate::ListedDevice::new(&peer, "Laptop", 0)],
        )
        .unwrap()
        .encode();
        let mut out = vec![LINK_VERSION];
        out.extend_from_slice(&[7; 32]);
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(list.len() as u16).to_be_bytes());
        out.extend_from_slice(&list);
        out
    }

    #[test]
    fn opened_bundle_lengths_are_checked_before_the_bytes_behind_them() {
        let mut ok = plain_prefix(b"Sam");
        ok.extend_from_slice(&3u32.to_be_bytes());
        ok.extend_from_slice(b"abc");
        let bundle = LinkBundle::decode_plain(&ok).unwrap();
        assert_eq!(bundle.sync, b"abc");
        assert_eq!(bundle.display_name, "Sam");

        let mut huge = plain_prefix(b"Sam");
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            LinkBundle::decode_plain(&huge).unwrap_err(),
            BundleError::SyncTooLarge {
                found: u32::MAX as usize,
                max: MAX_SYNC_BYTES
            }
        );
        let mut short = plain_prefix(b"Sam");
        short.extend_from_slice(&4u32.to_be_bytes());
        short.extend_from_slice(b"abc");
        assert_eq!(
            LinkBundle::decode_plain(&short).unwrap_err(),
            BundleError::Truncated
        );
        let mut trailing = ok.clone();
        trailing.push(0);
        assert_eq!(
            LinkBundle::decode_plain(&trailing).unwrap_err(),
            BundleError::TrailingBytes { count: 1 }
        );
        let mut long_name = plain_prefix(b"Sam");
        long_name[1 + 32 + 4] = 200;
        assert!(matches!(
            LinkBundle::decode_plain(&long_name).unwrap_err(),
            BundleError::DisplayName(FieldError::TooLong { found: 200, .. })
        ));
        let mut bad_utf8 = plain_prefix(b"S\xffm");
        bad_utf8.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            LinkBundle::decode_plain(&bad_utf8).unwrap_err(),
            BundleError::DisplayNameNotUtf8
        );
        let mut long_list = plain_prefix(b"Sam");
        let at = 1 + 32 + 4 + 1 + 3;
        long_list[at..at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            LinkBundle::decode_plain(&long_list).unwrap_err(),
            BundleError::DeviceListEncoding(devices::DecodeError::TooLarge { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn opened_bundle_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = LinkBundle::decode_plain(&bytes);
        }

        #[test]
        fn base32_decoder_never_panics(values in proptest::collection::vec(0u8..32, 0..600)) {
            let _ = decode_base32(&values);
        }
    }
}
