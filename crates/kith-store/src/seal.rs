//! Passphrase sealing shared by the store's lock and the identity file.
//!
//! A passphrase and a random salt go through Argon2id (cost in
//! [`KdfParams`]) to a 32-byte key; data is then sealed with
//! XChaCha20-Poly1305 under a 24-byte nonce, with associated data chosen by
//! the caller (the store binds tree and key, the identity file its header).
//! Cost parameters read from disk are checked against [`KdfParams::check`]
//! before any memory is allocated for them.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use kith_proto::random_bytes;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest passphrase accepted, in bytes.
pub const MAX_PASSPHRASE_BYTES: usize = 1024;
/// Salt length in bytes.
pub(crate) const SALT_LEN: usize = 16;
/// Nonce length in bytes.
pub(crate) const NONCE_LEN: usize = 24;
/// Authentication tag length in bytes.
pub(crate) const TAG_LEN: usize = 16;

/// Most memory accepted, in KiB (1 GiB).
pub(crate) const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// Most passes accepted.
pub(crate) const MAX_ITERATIONS: u32 = 16;
/// Most lanes accepted.
pub(crate) const MAX_PARALLELISM: u32 = 16;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// For real profiles: 64 MiB, 3 passes (about half a second here).
    pub const INTERACTIVE: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };
    /// For tests only: fast and weak.
    pub const TESTING: Self = Self {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// Checks the parameters are ones Kith writes and reads: at most 1 GiB
    /// of memory, 16 passes and 16 lanes, and what Argon2 itself requires
    /// (at least one pass and lane, 8 KiB of memory per lane).
    pub(crate) fn check(&self) -> Result<Params, String> {
        if self.memory_kib > MAX_MEMORY_KIB {
            return Err(format!(
                "{} KiB of memory is more than the {MAX_MEMORY_KIB} allowed",
                self.memory_kib
            ));
        }
        if self.iterations > MAX_ITERATIONS {
            return Err(format!(
                "{} passes is more than the {MAX_ITERATIONS} allowed",
                self.iterations
            ));
        }
        if self.parallelism > MAX_PARALLELISM {
            return Err(format!(
                "{} lanes is more than the {MAX_PARALLELISM} allowed",
                self.parallelism
            ));
        }
        Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| e.to_string())
    }
}

/// A passphrase; wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl Passphrase {
    /// Wraps a passphrase typed by the user.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(…)")
    }
}

/// Why no key could be derived.
#[derive(Debug)]
pub(crate) enum DeriveError {
    /// The passphrase is longer than [`MAX_PASSPHRASE_BYTES`].
    PassphraseTooLong,
    /// The cost parameters are out of bounds or refused by Argon2.
    Params(String),
    /// Argon2 failed.
    Argon2(String),
}

/// A key derived from a passphrase; wiped from memory when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Cipher {
    key: [u8; 32],
}

impl Cipher {
    /// Derives the key for `passphrase` with Argon2id. Parameters are
    /// checked first, so nothing is allocated for out-of-bounds ones.
    pub(crate) fn derive(
        passphrase: &Passphrase,
        salt: &[u8; SALT_LEN],
        params: KdfParams,
    ) -> Result<Self, DeriveError> {
        if passphrase.0.len() > MAX_PASSPHRASE_BYTES {
            return Err(DeriveError::PassphraseTooLong);
        }
        let params = params.check().map_err(DeriveError::Params)?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.0.as_bytes(), salt, &mut key)
            .map_err(|e| DeriveError::Argon2(e.to_string()))?;
        Ok(Self { key })
    }

    /// Seals `plain` under `nonce`: ciphertext ‖ tag. `None` only for
    /// plaintexts far beyond anything Kith stores.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Option<Vec<u8>> {
        XChaCha20Poly1305::new(&self.key.into())
            .encrypt(&XNonce::from(*nonce), Payload { msg: plain, aad })
            .ok()
    }

    /// Opens what [`Self::seal`] made; `None` if the key, nonce, associated
    /// data or ciphertext differ.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        if sealed.len() < TAG_LEN {
            return None;
        }
        XChaCha20Poly1305::new(&self.key.into())
            .decrypt(&XNonce::from(*nonce), Payload { msg: sealed, aad })
            .ok()
    }

    /// Seals `plain` under a fresh random nonce: nonce ‖ ciphertext ‖ tag.
    pub(crate) fn seal_random(&self, aad: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let nonce = random_bytes::<NONCE_LEN>();
        let sealed = self.seal(&nonce, aad, plain)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Opens what [`Self::seal_random`] made.
    pub(crate) fn open_random(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, body) = sealed.split_first_chunk::<NONCE_LEN>()?;
        self.open(nonce, aad, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_bounds_params_are_refused_before_deriving() {
        let pass = Passphrase::new("p");
        let salt = [7u8; SALT_LEN];
        for params in [
            KdfParams {
                memory_kib: u32::MAX,
                ..KdfParams::TESTING
            },
            KdfParams {
                iterations: u32::MAX,
                ..KdfParams::TESTING
            },
            KdfParams {
                parallelism: 1000,
                ..KdfParams::TESTING
            },
            KdfParams {
                iterations: 0,
                ..KdfParams::TESTING
            },
            KdfParams {
                memory_kib: 8,
                parallelism: 4,
                ..KdfParams::TESTING
            },
        ] {
            assert!(
                matches!(
                    Cipher::derive(&pass, &salt, params),
                    Err(DeriveError::Params(_))
                ),
                "{params:?}"
            );
        }
        assert!(KdfParams::INTERACTIVE.check().is_ok());
        assert!(
            KdfParams {
                memory_kib: MAX_MEMORY_KIB,
                iterations: MAX_ITERATIONS,
                parallelism: MAX_PARALLELISM,
            }
            .check()
            .is_ok()
        );
    }

    #[test]
    fn sealing_binds_key_nonce_and_associated_data() {
        let salt = [1u8; SALT_LEN];
        let cipher = Cipher::derive(&Passphrase::new("a"), &salt, KdfParams::TESTING).unwrap();
        let other = Cipher::derive(&Passphrase::new("b"), &salt, KdfParams::TESTING).unwrap();
        let sealed = cipher.seal_random(b"aad", b"secret").unwrap();
        assert_eq!(cipher.open_random(b"aad", &sealed).unwrap(), b"secret");
        assert!(cipher.open_random(b"other", &sealed).is_none());
        assert!(other.open_random(b"aad", &sealed).is_none());
        assert!(
            cipher
                .open_random(b"aad", &sealed[..NONCE_LEN + 3])
                .is_none()
        );
        assert!(cipher.open_random(b"aad", &[]).is_none());
    }
}
