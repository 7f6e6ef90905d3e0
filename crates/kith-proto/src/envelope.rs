//! Sealed envelopes: one-off items that only their recipient can open and
//! that prove who sent them.
//!
//! Used where no ratchet session exists yet or where none fits: friend
//! requests, the outer layer of mailbox items, presence contents and the
//! device-link payload. Layout (version 1):
//!
//! ```text
//! outer:  version (1) | ephemeral X25519 public key (32) | ciphertext + tag (16)
//! inner:  sender account key (32) | signature (64) | payload
//! signed: "kith/envelope/v1/sig" | recipient account key | ephemeral key | payload
//! ```
//!
//! The sender makes a fresh X25519 key for every envelope and agrees a secret
//! with the recipient's X25519 key (the Montgomery form of their Ed25519
//! account key, so a Kith ID is all a sender needs). HKDF-SHA256 turns the
//! secret into a XChaCha20-Poly1305 key and nonce (salt: a domain tag; info:
//! both public keys); the version byte and ephemeral key are authenticated as
//! associated data. Because every key is used once, the nonce can be derived
//! rather than sent.
//!
//! The signature covers the recipient's key and the ephemeral key, so a
//! recipient cannot re-seal a signed payload to someone else as if the
//! sender had written to them. Volunteers and other carriers learn nothing
//! but the recipient's X25519 key and the length.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::identity::{
    ACCOUNT_KEY_LEN, AccountKeypair, AccountPublicKey, SIGNATURE_LEN, Signature,
};
use crate::random::random_bytes;

/// The envelope format version this build reads and writes.
pub const ENVELOPE_VERSION: u8 = 1;
/// Largest payload that can be sealed, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Bytes an envelope adds to its payload.
pub const OVERHEAD: usize = 1 + 32 + TAG_LEN + ACCOUNT_KEY_LEN + SIGNATURE_LEN;
/// Largest envelope [`open`] accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = MAX_PAYLOAD_BYTES + OVERHEAD;

const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 32;
const KDF_SALT: &[u8] = b"kith/envelope/v1/kdf";
const SIG_DOMAIN: &[u8] = b"kith/envelope/v1/sig";

/// Why a payload could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Over [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The recipient key is a low-order point no honest key can be.
    #[error("the recipient's key cannot be sealed to")]
    WeakRecipientKey,
    /// The cipher failed.
    #[error("encryption failed")]
    Encrypt,
}

/// Why an envelope could not be opened. None of these reveal which byte was
/// wrong: an envelope is either intact and for this account, or it is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Over [`MAX_ENVELOPE_BYTES`]; refused unread.
    #[error("envelope of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Too short to hold even an empty payload.
    #[error("envelope of {found} bytes is too short (at least {min} are needed)")]
    TooShort {
        /// Bytes given.
        found: usize,
        /// The minimum.
        min: usize,
    },
    /// An envelope version this build does not know.
    #[error(
        "envelope version {found} is not supported (this build reads version {ENVELOPE_VERSION})"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The ephemeral key is a low-order point.
    #[error("the envelope's key is invalid")]
    WeakEphemeralKey,
    /// Not sealed to this account, or altered on the way.
    #[error("the envelope is not for this account or was altered")]
    Decrypt,
    /// The inner sender key is not a valid account key.
    #[error("the envelope names an invalid sender key")]
    InvalidSenderKey,
    /// The sender's signature does not match.
    #[error("the sender's signature does not match the contents")]
    BadSignature,
}

/// An opened envelope: who sent it and what they said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sender's account key, proven by their signature.
    pub sender: AccountPublicKey,
    /// The payload, exactly as sealed.
    pub payload: Vec<u8>,
}

struct Keys {
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 24],
}

fn derive_keys(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> Keys {
    let kdf = Hkdf::<Sha256>::new(Some(KDF_SALT), shared);
    let mut info = [0u8; 64];
    info[..32].copy_from_slice(ephemeral);
    info[32..].copy_from_slice(recipient);
    let mut okm = Zeroizing::new([0u8; 56]);
    // 56 bytes is far below HKDF-SHA256's 8160-byte output limit.
    #[allow(clippy::expect_used)]
    kdf.expand(&info, okm.as_mut_slice())
        .expect("56 bytes is a valid HKDF-SHA256 output length");
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&okm[32..]);
    Keys { key, nonce }
}

fn signed_bytes(recipient: &AccountPublicKey, ephemeral: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIG_DOMAIN.len() + 64 + payload.len());
    out.extend_from_slice(SIG_DOMAIN);
    out.extend_from_slice(&recipient.to_bytes());
    out.extend_from_slice(ephemeral);
    out.extend_from_slice(payload);
    out
}

/// Seals `payload` from `sender` to `recipient`.
pub fn seal(
    sender: &AccountKeypair,
    recipient: &AccountPublicKey,
    payload: &[u8],
) -> Result<Vec<u8>, SealError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(SealError::TooLarge {
            found: payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let ephemeral_secret = x25519_dalek::StaticSecret::from(*Zeroizing::new(random_bytes::<32>()));
    let ephemeral = x25519_dalek::PublicKey::from(&ephemeral_secret).to_bytes();
    let recipient_x = recipient.to_x25519();
    let shared = ephemeral_secret.diffie_hellman(&recipient_x);
    if !shared.was_contributory() {
        return Err(SealError::WeakRecipientKey);
    }
    let keys = derive_keys(shared.as_bytes(), &ephemeral, recipient_x.as_bytes());

    let signature = sender.sign(&signed_bytes(recipient, &ephemeral, payload));
    let mut inner = Zeroizing::new(Vec::with_capacity(
        ACCOUNT_KEY_LEN + SIGNATURE_LEN + payload.len(),
    ));
    inner.extend_from_slice(&sender.public().to_bytes());
    inner.extend_from_slice(&signature.0);
    inner.extend_from_slice(payload);

    let mut header = [0u8; HEADER_LEN];
    header[0] = ENVELOPE_VERSION;
    header[1..].copy_from_slice(&ephemeral);
    let cipher = XChaCha20Poly1305::new(&(*keys.key).into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(keys.nonce),
            Payload {
                msg: &inner,
                aad: &header,
            },
        )
        .map_err(|_| SealError::Encrypt)?;
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens an envelope sealed to `recipient`, checking the sender's signature.
pub fn open(recipient: &AccountKeypair, envelope: &[u8]) -> Result<Opened, OpenError> {
    if envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(OpenError::TooLarge {
            found: envelope.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    if let Some(&version) = envelope.first()
        && version != ENVELOPE_VERSION
    {
        return Err(OpenError::UnknownVersion { found: version });
    }
    if envelope.len() < OVERHEAD {
        return Err(OpenError::TooShort {
            found: envelope.len(),
            min: OVERHEAD,
        });
    }
    let (header, ciphertext) = envelope.split_at(HEADER_LEN);
    let mut ephemeral = [0u8; 32];
    ephemeral.copy_from_slice(&header[1..]);

    let recipient_public = recipient.public();
    let recipient_x = recipient_public.to_x25519();
    let shared = recipient
        .to_x25519()
        .diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return Err(OpenError::WeakEphemeralKey);
    }
    let keys = derive_keys(shared.as_bytes(), &ephemeral, recipient_x.as_bytes());
    let cipher = XChaCha20Poly1305::new(&(*keys.key).into());
    let inner = Zeroizing::new(
        cipher
            .decrypt(
                &XNonce::from(keys.nonce),
                Payload {
                    msg: ciphertext,
                    aad: header,
                },
            )
            .map_err(|_| OpenError::Decrypt)?,
    );

    // The length check above guarantees the inner part holds at least a key
    // and a signature.
    let (key_bytes, rest) = inner.split_at(ACCOUNT_KEY_LEN);
    let (signature_bytes, payload) = rest.split_at(SIGNATURE_LEN);
    let mut key = [0u8; ACCOUNT_KEY_LEN];
    key.copy_from_slice(key_bytes);
    let sender = AccountPublicKey::from_bytes(&key).map_err(|_| OpenError::InvalidSenderKey)?;
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(signature_bytes);
    sender
        .verify(
            &signed_bytes(&recipient_public, &ephemeral, payload),
            &Signature(signature),
        )
        .map_err(|_| OpenError::BadSignature)?;
    Ok(Opened {
        sender,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_opens_and_learns_the_sender() {
        let alice = AccountKeypair::generate();
        let bob = AccountKeypair::generate();
        let sealed = seal(&alice, &bob.public(), b"hi bob").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 6);
        let opened = open(&bob, &sealed).unwrap();
        assert_eq!(opened.sender, alice.public());
        assert_eq!(opened.payload, b"hi bob");
    }

    #[test]
    fn empty_and_maximal_payloads_work_and_larger_is_refused() {
        let alice = AccountKeypair::generate();
        let bob = AccountKeypair::generate();
        assert_eq!(
            open(&bob, &seal(&alice, &bob.public(), b"").unwrap())
                .unwrap()
                .payload,
            b""
        );
        let big = vec![7u8; MAX_PAYLOAD_BYTES];
        assert_eq!(
            open(&bob, &seal(&alice, &bob.public(), &big).unwrap())
                .unwrap()
                .payload,
            big
        );
        assert_eq!(
            seal(&alice, &bob.public(), &vec![0u8; MAX_PAYLOAD_BYTES + 1]),
            Err(SealError::TooLarge {
                found: MAX_PAYLOAD_BYTES + 1,
                max: MAX_PAYLOAD_BYTES
            })
        );
    }

    #[test]
    fn a_bad_signature_inside_a_valid_seal_is_caught() {
        // Build an envelope by hand whose inner signature is wrong, sealed
        // correctly, so only the signature check can catch it.
        let alice = AccountKeypair::generate();
        let bob = AccountKeypair::generate();
        let ephemeral_secret = x25519_dalek::StaticSecret::from([9u8; 32]);
        let ephemeral = x25519_dalek::PublicKey::from(&ephemeral_secret).to_bytes();
        let bob_x = bob.public().to_x25519();
        let shared = ephemeral_secret.diffie_hellman(&bob_x);
        let keys = derive_keys(shared.as_bytes(), &ephemeral, bob_x.as_bytes());
        let mut signature = alice.sign(&signed_bytes(&bob.public(), &ephemeral, b"payload"));
        signature.0[10] ^= 1;
        let mut inner = alice.public().to_bytes().to_vec();
        inner.extend_from_slice(&signature.0);
        inner.extend_from_slice(b"payload");
        let mut header = vec![ENVELOPE_VERSION];
        header.extend_from_slice(&ephemeral);
        let cipher = XChaCha20Poly1305::new(&(*keys.key).into());
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(keys.nonce),
                Payload {
                    msg: &inner,
                    aad: &header,
                },
            )
            .unwrap();
        let mut envelope = header;
        envelope.extend_from_slice(&ciphertext);
        assert_eq!(open(&bob, &envelope), Err(OpenError::BadSignature));
    }

    #[test]
    fn low_order_ephemeral_keys_are_refused() {
        let bob = AccountKeypair::generate();
        let mut envelope = vec![ENVELOPE_VERSION];
        envelope.extend_from_slice(&[0u8; 32]);
        envelope.extend_from_slice(&[0u8; OVERHEAD]);
        assert_eq!(open(&bob, &envelope), Err(OpenError::WeakEphemeralKey));
    }

    #[test]
    fn framing_errors_are_typed() {
        let bob = AccountKeypair::generate();
        assert_eq!(
            open(&bob, &[2, 0, 0]),
            Err(OpenError::UnknownVersion { found: 2 })
        );
        assert_eq!(
            open(&bob, &[ENVELOPE_VERSION; 10]),
            Err(OpenError::TooShort {
                found: 10,
                min: OVERHEAD
            })
        );
        assert!(matches!(
            open(&bob, &vec![ENVELOPE_VERSION; MAX_ENVELOPE_BYTES + 1]),
            Err(OpenError::TooLarge { .. })
        ));
    }
}
