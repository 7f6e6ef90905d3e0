//! The Kith ID: what one person gives another to become friends.
//!
//! Binary layout (39 bytes, version 1):
//!
//! ```text
//! version (1) | account public key (32) | nospam (4) | checksum (2)
//! ```
//!
//! The checksum is CRC-16/XMODEM over the first 37 bytes, big-endian. A CRC
//! of degree 16 catches every error burst of up to 16 bits, so any one
//! mistyped character (5 bits) and any swap of two neighbouring characters
//! (10 bits) is always caught, not just usually.
//!
//! The text form is those 39 bytes in Crockford base32: 63 characters,
//! case-insensitive, with no look-alike symbols (Tox needed 76 hex digits).
//! The link form is `kith:` followed by the text. Parsing accepts either,
//! ignores spaces and hyphens people add for readability, and reports what
//! went wrong in words: a wrong length, a character outside the alphabet, a
//! checksum mismatch (a typo) or an ID version this build does not know.
//!
//! The **nospam** lets a person retire an ID that attracts spam: friend
//! requests must quote the current nospam, so rotating it invalidates old IDs
//! for new requests while existing friends are unaffected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::base32;
use crate::identity::{ACCOUNT_KEY_LEN, AccountPublicKey};
use crate::random::random_bytes;

/// The only Kith ID version this build reads and writes.
pub const KITH_ID_VERSION: u8 = 1;
/// Length of a Kith ID in bytes.
pub const KITH_ID_BYTES: usize = 1 + ACCOUNT_KEY_LEN + 4 + 2;
/// Length of a Kith ID's text form in characters.
pub const KITH_ID_TEXT_LEN: usize = base32::encoded_len(KITH_ID_BYTES);
/// The URI scheme of Kith links.
pub const URI_SCHEME: &str = "kith";
/// Longest input [`KithId::parse`] looks at; anything longer is refused
/// before it is copied or scanned.
pub const MAX_ID_INPUT_LEN: usize = 256;

const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// Four bytes that make an ID revocable for new friend requests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nospam(pub [u8; 4]);

impl Nospam {
    /// A fresh random nospam.
    pub fn random() -> Self {
        Self(random_bytes())
    }
}

impl fmt::Debug for Nospam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nospam({self})")
    }
}

impl fmt::Display for Nospam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a piece of text is not a valid Kith ID. Each message tells the person
/// what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KithIdError {
    /// Nothing was given.
    #[error("no Kith ID given")]
    Empty,
    /// More text than any ID or link could be; not looked at further.
    #[error("that is far too long to be a Kith ID (more than {max} bytes)")]
    TooLong {
        /// The most input looked at.
        max: usize,
    },
    /// A character that is not part of the ID alphabet.
    #[error(
        "'{character}' (character {position}) cannot appear in a Kith ID: IDs use digits and the letters A-Z except I, L, O and U"
    )]
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its 1-based position among the ID's characters.
        position: usize,
    },
    /// Too few or too many characters: something was cut off or added.
    #[error(
        "a Kith ID has {expected} characters but this has {found}: part of it is missing or extra"
    )]
    WrongLength {
        /// Characters an ID has.
        expected: usize,
        /// Characters given.
        found: usize,
    },
    /// The checksum does not match: at least one character was mistyped.
    #[error("checksum mismatch: this ID has a typo, so check it character by character")]
    ChecksumMismatch,
    /// A well-formed ID of a version this build does not know.
    #[error(
        "this is a version {found} Kith ID, but this Kith only knows version {KITH_ID_VERSION}: update Kith"
    )]
    UnknownVersion {
        /// The version the ID carries.
        found: u8,
    },
    /// The checksum matches but the bytes are not a valid account key: the ID
    /// was not made by Kith.
    #[error("this ID does not hold a valid account key; it was not made by Kith")]
    InvalidAccountKey,
}

/// A person's shareable address: their account key and current nospam.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KithId {
    account: AccountPublicKey,
    nospam: Nospam,
}

impl KithId {
    /// The ID for `account` with `nospam`.
    pub fn new(account: AccountPublicKey, nospam: Nospam) -> Self {
        Self { account, nospam }
    }

    /// The account key the ID names.
    pub fn account(&self) -> &AccountPublicKey {
        &self.account
    }

    /// The nospam a friend request to this ID must quote.
    pub fn nospam(&self) -> Nospam {
        self.nospam
    }

    /// The 39-byte binary form.
    pub fn to_bytes(&self) -> [u8; KITH_ID_BYTES] {
        let mut out = [0u8; KITH_ID_BYTES];
        out[0] = KITH_ID_VERSION;
        out[1..33].copy_from_slice(&self.account.to_bytes());
        out[33..37].copy_from_slice(&self.nospam.0);
        let checksum = CRC.checksum(&out[..37]);
        out[37..].copy_from_slice(&checksum.to_be_bytes());
        out
    }

    /// Reads the 39-byte binary form, checking checksum, version and key in
    /// that order (a typo in the version byte is reported as a typo).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KithIdError> {
        let bytes: &[u8; KITH_ID_BYTES] =
            bytes.try_into().map_err(|_| KithIdError::WrongLength {
                expected: KITH_ID_BYTES,
                found: bytes.len(),
            })?;
        let checksum = u16::from_be_bytes([bytes[37], bytes[38]]);
        if CRC.checksum(&bytes[..37]) != checksum {
            return Err(KithIdError::ChecksumMismatch);
        }
        if bytes[0] != KITH_ID_VERSION {
            return Err(KithIdError::UnknownVersion { found: bytes[0] });
        }
        let mut key = [0u8; ACCOUNT_KEY_LEN];
        key.copy_from_slice(&bytes[1..33]);
        let account =
            AccountPublicKey::from_bytes(&key).map_err(|_| KithIdError::InvalidAccountKey)?;
        let nospam = Nospam([bytes[33], bytes[34], bytes[35], bytes[36]]);
        Ok(Self { account, nospam })
    }

    /// The 63-character text form (upper case, no separators).
    pub fn to_text(&self) -> String {
        base32::encode(&self.to_bytes())
    }

    /// The `kith:` link form.
    pub fn to_uri(&self) -> String {
        format!("{URI_SCHEME}:{}", self.to_text())
    }

    /// Parses an ID from its text or link form.
    ///
    /// Leading and trailing whitespace, a `kith:` or `kith://` prefix (any
    /// case), and spaces or hyphens between characters are ignored.
    pub fn parse(input: &str) -> Result<Self, KithIdError> {
        if input.len() > MAX_ID_INPUT_LEN {
            return Err(KithIdError::TooLong {
                max: MAX_ID_INPUT_LEN,
            });
        }
        let mut text = input.trim();
        if text.len() > URI_SCHEME.len()
            && text.is_char_boundary(URI_SCHEME.len() + 1)
            && text[..URI_SCHEME.len() + 1].eq_ignore_ascii_case("kith:")
        {
            text = &text[URI_SCHEME.len() + 1..];
            text = text.strip_prefix("//").unwrap_or(text);
        }
        if text.is_empty() {
            return Err(KithIdError::Empty);
        }
        let mut values = Vec::with_capacity(KITH_ID_TEXT_LEN);
        for c in text.chars().filter(|c| !is_separator(*c)) {
            match base32::symbol_value(c) {
                Some(v) => values.push(v),
                None => {
                    return Err(KithIdError::InvalidCharacter {
                        character: c,
                        position: values.len() + 1,
                    });
                }
            }
        }
        if values.len() != KITH_ID_TEXT_LEN {
            return Err(KithIdError::WrongLength {
                expected: KITH_ID_TEXT_LEN,
                found: values.len(),
            });
        }
        // Non-zero padding bits in the last character can only be a typo.
        let bytes =
            base32::decode_values::<KITH_ID_BYTES>(&values).ok_or(KithIdError::ChecksumMismatch)?;
        Self::from_bytes(&bytes)
    }
}

fn is_separator(c: char) -> bool {
    c == '-' || c.is_whitespace()
}

impl fmt::Display for KithId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for KithId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KithId({})", self.to_text())
    }
}

impl FromStr for KithId {
    type Err = KithIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for KithId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for KithId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;

        impl serde::de::Visitor<'_> for BytesVisitor {
            type Value = KithId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{KITH_ID_BYTES} bytes of Kith ID")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<KithId, E> {
                KithId::from_bytes(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_bytes(BytesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccountKeypair;

    fn sample() -> KithId {
        KithId::new(AccountKeypair::generate().public(), Nospam::random())
    }

    #[test]
    fn text_is_63_characters_and_shorter_than_tox() {
        let id = sample();
        assert_eq!(id.to_text().len(), 63);
        assert!(id.to_text().len() < 76);
    }

    #[test]
    fn parse_accepts_lower_case_links_and_separators() {
        let id = sample();
        let text = id.to_text();
        assert_eq!(KithId::parse(&text.to_lowercase()), Ok(id));
        assert_eq!(KithId::parse(&id.to_uri()), Ok(id));
        assert_eq!(KithId::parse(&format!("KITH://{text}")), Ok(id));
        let spaced: String = text
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = if i > 0 && i % 7 == 0 { Some('-') } else { None };
                sep.into_iter().chain(std::iter::once(c))
            })
            .collect();
        assert_eq!(KithId::parse(&format!("  {spaced}\n")), Ok(id));
    }

    #[test]
    fn each_error_says_what_went_wrong() {
        let text = sample().to_text();
        assert_eq!(KithId::parse("   "), Err(KithIdError::Empty));
        assert_eq!(KithId::parse("kith:"), Err(KithIdError::Empty));
        assert_eq!(
            KithId::parse(&text[..62]),
            Err(KithIdError::WrongLength {
                expected: 63,
                found: 62
            })
        );
        assert_eq!(
            KithId::parse(&format!("{text}7")),
            Err(KithIdError::WrongLength {
                expected: 63,
                found: 64
            })
        );
        let mut bad = text.clone();
        bad.replace_range(10..11, "U");
        assert_eq!(
            KithId::parse(&bad),
            Err(KithIdError::InvalidCharacter {
                character: 'U',
                position: 11
            })
        );
        assert!(matches!(
            KithId::parse(&"A".repeat(1000)),
            Err(KithIdError::TooLong { .. })
        ));
        let message = KithIdError::ChecksumMismatch.to_string();
        assert!(message.contains("typo"), "{message}");
    }

    #[test]
    fn unknown_version_with_valid_checksum_is_reported_as_such() {
        let mut bytes = sample().to_bytes();
        bytes[0] = 2;
        let checksum = CRC.checksum(&bytes[..37]);
        bytes[37..].copy_from_slice(&checksum.to_be_bytes());
        let text = base32::encode(&bytes);
        assert_eq!(
            KithId::parse(&text),
            Err(KithIdError::UnknownVersion { found: 2 })
        );
    }

    #[test]
    fn oversized_input_is_refused_without_scanning_it() {
        let huge = "0".repeat(10 * 1024 * 1024);
        assert!(matches!(
            KithId::parse(&huge),
            Err(KithIdError::TooLong {
                max: MAX_ID_INPUT_LEN
            })
        ));
    }
}
