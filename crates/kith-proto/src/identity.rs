//! Account and device identities.
//!
//! The **account** is the person: an Ed25519 keypair shared by all of that
//! person's linked devices. Its public half is what a Kith ID carries and
//! what friends sign and seal to. The **device** is one computer: its own
//! libp2p Ed25519 keypair, whose public half is the device's `PeerId`.
//!
//! Secret halves never print (their `Debug` shows only the public half) and
//! are zeroized when dropped: ed25519-dalek's `SigningKey` and libp2p's
//! keypair both wipe themselves, and every copy of raw secret bytes this
//! module hands out is wrapped in [`Zeroizing`].

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::random::random_bytes;

/// Length of an account public key in bytes.
pub const ACCOUNT_KEY_LEN: usize = 32;
/// Length of an account secret key in bytes.
pub const ACCOUNT_SECRET_LEN: usize = 32;
/// Length of a signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signature made by an account key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Why a key could not be read or a signature did not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes are not a point on the Ed25519 curve.
    #[error("the bytes are not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not match the message and key.
    #[error("the signature does not match")]
    BadSignature,
    /// A device key in an encoding this version cannot read.
    #[error("the device key could not be decoded")]
    InvalidDeviceKey,
}

/// The public half of an account key: who a person is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountPublicKey(VerifyingKey);

impl AccountPublicKey {
    /// Reads a public key from its 32 bytes, refusing bytes that are not a
    /// valid curve point.
    pub fn from_bytes(bytes: &[u8; ACCOUNT_KEY_LEN]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::InvalidPublicKey)
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; ACCOUNT_KEY_LEN] {
        self.0.to_bytes()
    }

    /// The key as lowercase hexadecimal, for display and logs.
    pub fn to_hex(&self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks `signature` over `message` strictly (no malleable or
    /// small-order forms are accepted).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), KeyError> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(message, &signature)
            .map_err(|_| KeyError::BadSignature)
    }

    /// The X25519 public key that corresponds to this Ed25519 key (the
    /// birational map from Edwards to Montgomery form), so that anyone who
    /// holds only a Kith ID can seal an envelope to its owner.
    pub fn to_x25519(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0.to_montgomery().to_bytes())
    }
}

impl fmt::Debug for AccountPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountPublicKey({})", self.to_hex())
    }
}

impl Serialize for AccountPublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_bytes().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AccountPublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = <[u8; ACCOUNT_KEY_LEN]>::deserialize(deserializer)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An account keypair. The secret half is zeroized when this is dropped.
pub struct AccountKeypair(SigningKey);

impl AccountKeypair {
    /// Makes a new account from fresh operating-system randomness.
    pub fn generate() -> Self {
        let secret = Zeroizing::new(random_bytes::<ACCOUNT_SECRET_LEN>());
        Self(SigningKey::from_bytes(&secret))
    }

    /// Rebuilds an account keypair from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; ACCOUNT_SECRET_LEN]) -> Self {
        Self(SigningKey::from_bytes(secret))
    }

    /// The 32 secret bytes, for storage. The copy wipes itself when dropped.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; ACCOUNT_SECRET_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> AccountPublicKey {
        AccountPublicKey(self.0.verifying_key())
    }

    /// Signs `message` with the account key.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }

    /// The X25519 secret that matches [`AccountPublicKey::to_x25519`], used
    /// only to open envelopes sealed to this account.
    pub(crate) fn to_x25519(&self) -> x25519_dalek::StaticSecret {
        let scalar = Zeroizing::new(self.0.to_scalar_bytes());
        x25519_dalek::StaticSecret::from(*scalar)
    }
}

impl fmt::Debug for AccountKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKeypair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// One computer's own keypair: its libp2p identity, whose public half is the
/// device's `PeerId`. The secret half is zeroized when this is dropped.
#[derive(Clone)]
pub struct DeviceKeypair(Keypair);

impl DeviceKeypair {
    /// Makes a new Ed25519 device key.
    pub fn generate() -> Self {
        Self(Keypair::generate_ed25519())
    }

    /// The libp2p keypair, for building a swarm.
    pub fn libp2p(&self) -> &Keypair {
        &self.0
    }

    /// The device's network identity.
    pub fn peer_id(&self) -> PeerId {
        self.0.public().to_peer_id()
    }

    /// The libp2p protobuf encoding of the keypair, for storage. The copy
    /// wipes itself when dropped.
    pub fn to_protobuf(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.0
            .to_protobuf_encoding()
            .map(Zeroizing::new)
            .map_err(|_| KeyError::InvalidDeviceKey)
    }

    /// Reads a keypair written by [`Self::to_protobuf`]; only Ed25519 device
    /// keys are accepted.
    pub fn from_protobuf(bytes: &[u8]) -> Result<Self, KeyError> {
        let keypair =
            Keypair::from_protobuf_encoding(bytes).map_err(|_| KeyError::InvalidDeviceKey)?;
        if keypair.clone().try_into_ed25519().is_err() {
            return Err(KeyError::InvalidDeviceKey);
        }
        Ok(Self(keypair))
    }
}

impl From<Keypair> for DeviceKeypair {
    fn from(keypair: Keypair) -> Self {
        Self(keypair)
    }
}

impl fmt::Debug for DeviceKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeypair")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_key_round_trips_through_secret_bytes() {
        let account = AccountKeypair::generate();
        let again = AccountKeypair::from_secret_bytes(&account.secret_bytes());
        assert_eq!(account.public(), again.public());
    }

    #[test]
    fn signatures_verify_and_reject_other_messages() {
        let account = AccountKeypair::generate();
        let signature = account.sign(b"hello");
        assert_eq!(account.public().verify(b"hello", &signature), Ok(()));
        assert_eq!(
            account.public().verify(b"hellp", &signature),
            Err(KeyError::BadSignature)
        );
        let other = AccountKeypair::generate();
        assert_eq!(
            other.public().verify(b"hello", &signature),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn x25519_halves_agree() {
        let account = AccountKeypair::generate();
        let derived_public = x25519_dalek::PublicKey::from(&account.to_x25519());
        assert_eq!(derived_public, account.public().to_x25519());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let account = AccountKeypair::generate();
        let secret_hex: String = account
            .secret_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let shown = format!("{account:?}");
        assert!(!shown.contains(&secret_hex));
        assert!(shown.contains(&account.public().to_hex()));
    }

    #[test]
    fn device_key_round_trips_through_protobuf() {
        let device = DeviceKeypair::generate();
        let bytes = device.to_protobuf().unwrap();
        let again = DeviceKeypair::from_protobuf(&bytes).unwrap();
        assert_eq!(device.peer_id(), again.peer_id());
        assert_eq!(
            DeviceKeypair::from_protobuf(&bytes[..bytes.len() - 1]).unwrap_err(),
            KeyError::InvalidDeviceKey
        );
    }

    #[test]
    fn invalid_public_key_bytes_are_refused() {
        // y = 2 is not the y-coordinate of any point on the curve.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert_eq!(
            AccountPublicKey::from_bytes(&bytes).unwrap_err(),
            KeyError::InvalidPublicKey
        );
    }
}
