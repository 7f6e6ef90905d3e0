//! End-to-end sessions: one Olm double ratchet per pair of devices, from
//! vodozemac (an audited implementation), giving forward secrecy and
//! post-compromise security.
//!
//! Each device holds a [`DeviceSecrets`] (a vodozemac `Account`). It
//! publishes [`Prekeys`] — its Curve25519 identity key and current fallback
//! key, 65 bytes — in its presence record. A friend's device opens an
//! outbound [`PairSession`] from them and sends a pre-key message; the first
//! message that arrives creates the inbound session. From then on every
//! message advances the ratchet, and message keys are deleted once used, so
//! a captured ciphertext cannot be opened again with a later state.
//!
//! Wire form of a session message: `version (1) | kind (1: 0 pre-key,
//! 1 normal) | Olm message bytes`, at most [`MAX_MESSAGE_BYTES`].
//!
//! The fallback key may be used by many first messages, so the very first
//! message of a session is protected by a key that lives until the fallback
//! key is rotated; everything after it has full forward secrecy. (Single-use
//! one-time keys would need a way to hand out and retire many keys; the
//! presence record has room for one.)
//!
//! Accounts and sessions are persisted as vodozemac pickles encrypted with a
//! 32-byte key the store provides. Forward secrecy holds only for the state
//! that is kept: an older pickle can still open messages a newer state has
//! forgotten, so the engine overwrites a session's pickle after every
//! encrypt and decrypt and never keeps old ones (vodozemac pickles do not
//! round-trip through postcard; store the encrypted string).

use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};
use zeroize::Zeroizing;

/// Session message format version.
pub const SESSION_VERSION: u8 = 1;
/// Largest session message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024;
/// Length of encoded [`Prekeys`].
pub const PREKEYS_LEN: usize = 1 + 32 + 32;
/// Largest pickle accepted, in bytes.
const MAX_PICKLE_BYTES: usize = 64 * 1024;

/// Why a session operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Input over its size limit; refused unread.
    #[error("session message of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Not a session message of a known version and kind.
    #[error("malformed session message: {0}")]
    Malformed(String),
    /// Prekeys that do not decode.
    #[error("invalid prekeys: {0}")]
    InvalidPrekeys(String),
    /// The session could not be created (a bad or reused key).
    #[error("could not start a session: {0}")]
    Create(String),
    /// The message could not be decrypted: not for this session, altered,
    /// or already used (its key is gone — forward secrecy).
    #[error("could not decrypt: {0}")]
    Decrypt(String),
    /// Encryption failed.
    #[error("could not encrypt: {0}")]
    Encrypt(String),
    /// A message that should start a session is not a pre-key message.
    #[error("expected a first (pre-key) message")]
    NotPreKey,
    /// A stored pickle could not be read (wrong key or damaged).
    #[error("stored session state could not be read: {0}")]
    Pickle(String),
}

/// What a device publishes so friends can start sessions with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prekeys {
    /// The device's Curve25519 identity key.
    pub identity: [u8; 32],
    /// Its current fallback key.
    pub fallback: [u8; 32],
}

impl Prekeys {
    /// `version (1) | identity (32) | fallback (32)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREKEYS_LEN);
        out.push(SESSION_VERSION);
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.fallback);
        out
    }

    /// Reads encoded prekeys.
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() != PREKEYS_LEN {
            return Err(SessionError::InvalidPrekeys(format!(
                "{} bytes, expected {PREKEYS_LEN}",
                bytes.len()
            )));
        }
        if bytes[0] != SESSION_VERSION {
            return Err(SessionError::InvalidPrekeys(format!(
                "version {}",
                bytes[0]
            )));
        }
        let mut identity = [0u8; 32];
        let mut fallback = [0u8; 32];
        identity.copy_from_slice(&bytes[1..33]);
        fallback.copy_from_slice(&bytes[33..]);
        Ok(Self { identity, fallback })
    }
}

fn encode_message(message: &OlmMessage) -> Vec<u8> {
    let (kind, body) = message.to_parts();
    let mut out = Vec::with_capacity(2 + body.len());
    out.push(SESSION_VERSION);
    // vodozemac's kinds are 0 (pre-key) and 1 (normal).
    out.push(u8::try_from(kind).unwrap_or(u8::MAX));
    out.extend_from_slice(&body);
    out
}

fn decode_message(bytes: &[u8]) -> Result<OlmMessage, SessionError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(SessionError::TooLarge {
            found: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let [version, kind, body @ ..] = bytes else {
        return Err(SessionError::Malformed("too short".into()));
    };
    if *version != SESSION_VERSION {
        return Err(SessionError::Malformed(format!("version {version}")));
    }
    OlmMessage::from_parts(usize::from(*kind), body)
        .map_err(|e| SessionError::Malformed(e.to_string()))
}

fn check_pickle(pickle: &str) -> Result<(), SessionError> {
    if pickle.len() > MAX_PICKLE_BYTES {
        return Err(SessionError::Pickle(format!(
            "{} bytes is too large",
            pickle.len()
        )));
    }
    Ok(())
}

/// A device's long-term session secrets.
pub struct DeviceSecrets {
    account: Account,
}

impl std::fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSecrets").finish_non_exhaustive()
    }
}

impl Default for DeviceSecrets {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceSecrets {
    /// New secrets with a fallback key ready to publish.
    pub fn new() -> Self {
        let mut account = Account::new();
        // Kith does not use Matrix's publish flow: the key stays listed as
        // "unpublished", which is how vodozemac hands it out.
        account.generate_fallback_key();
        Self { account }
    }

    /// What to publish in the presence record.
    pub fn prekeys(&self) -> Prekeys {
        let fallback = self
            .account
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .unwrap_or_default();
        Prekeys {
            identity: self.account.curve25519_key().to_bytes(),
            fallback,
        }
    }

    /// Replaces the fallback key (the previous one keeps working for
    /// sessions that were already on their way).
    pub fn rotate_fallback_key(&mut self) {
        self.account.generate_fallback_key();
    }

    /// Starts a session with a friend's device from its published prekeys.
    pub fn start_session(&self, theirs: &Prekeys) -> Result<PairSession, SessionError> {
        let session = self
            .account
            .create_outbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(theirs.identity),
                Curve25519PublicKey::from_bytes(theirs.fallback),
            )
            .map_err(|e| SessionError::Create(e.to_string()))?;
        Ok(PairSession { session })
    }

    /// Accepts the first message of a session a friend's device started;
    /// returns the session and the message's plaintext.
    pub fn accept_session(
        &mut self,
        their_identity: &[u8; 32],
        first: &[u8],
    ) -> Result<(PairSession, Zeroizing<Vec<u8>>), SessionError> {
        let OlmMessage::PreKey(message) = decode_message(first)? else {
            return Err(SessionError::NotPreKey);
        };
        let created = self
            .account
            .create_inbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(*their_identity),
                &message,
            )
            .map_err(|e| SessionError::Create(e.to_string()))?;
        Ok((
            PairSession {
                session: created.session,
            },
            Zeroizing::new(created.plaintext),
        ))
    }

    /// The secrets, encrypted with `key`, for the store.
    pub fn to_pickle(&self, key: &[u8; 32]) -> String {
        self.account.pickle().encrypt(key)
    }

    /// Secrets read back from [`Self::to_pickle`].
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self, SessionError> {
        check_pickle(pickle)?;
        let pickle = vodozemac::olm::AccountPickle::from_encrypted(pickle, key)
            .map_err(|e| SessionError::Pickle(e.to_string()))?;
        Ok(Self {
            account: Account::from_pickle(pickle),
        })
    }
}

/// The ratchet between this device and one friend's device.
pub struct PairSession {
    session: Session,
}

impl std::fmt::Debug for PairSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairSession")
            .field("id", &self.session.session_id())
            .finish_non_exhaustive()
    }
}

impl PairSession {
    /// A stable identifier of the session.
    pub fn id(&self) -> String {
        self.session.session_id()
    }

    /// Whether `message` is a first (pre-key) message of this very session,
    /// for example one the sender resent or an attacker replayed.
    ///
    /// Callers must offer an incoming pre-key message to the sessions they
    /// already hold with that device and call
    /// [`DeviceSecrets::accept_session`] only when none owns it: the
    /// fallback key can be used more than once, so accepting a replayed
    /// first message would start a second session and reset the ratchet.
    pub fn owns(&self, message: &[u8]) -> bool {
        matches!(
            decode_message(message),
            Ok(OlmMessage::PreKey(first)) if first.session_id() == self.session.session_id()
        )
    }

    /// Encrypts one message.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let message = self
            .session
            .encrypt(plaintext)
            .map_err(|e| SessionError::Encrypt(e.to_string()))?;
        Ok(encode_message(&message))
    }

    /// Decrypts one message, advancing the ratchet.
    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let message = decode_message(ciphertext)?;
        self.session
            .decrypt(&message)
            .map(Zeroizing::new)
            .map_err(|e| SessionError::Decrypt(e.to_string()))
    }

    /// The session state, encrypted with `key`, for the store.
    pub fn to_pickle(&self, key: &[u8; 32]) -> String {
        self.session.pickle().encrypt(key)
    }

    /// A session read back from [`Self::to_pickle`].
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self, SessionError> {
        check_pickle(pickle)?;
        let pickle = vodozemac::olm::SessionPickle::from_encrypted(pickle, key)
            .map_err(|e| SessionError::Pickle(e.to_string()))?;
        Ok(Self {
            session: Session::from_pickle(pickle),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alice starts a session with bob's published prekeys; bob accepts.
    fn pair() -> (DeviceSecrets, PairSession, DeviceSecrets, PairSession) {
        let alice = DeviceSecrets::new();
        let mut bob = DeviceSecrets::new();
        let mut to_bob = alice.start_session(&bob.prekeys()).unwrap();
        let first = to_bob.encrypt(b"hello bob").unwrap();
        let alice_identity = alice.prekeys().identity;
        let (to_alice, plain) = bob.accept_session(&alice_identity, &first).unwrap();
        assert_eq!(plain.as_slice(), b"hello bob");
        (alice, to_bob, bob, to_alice)
    }

    #[test]
    fn messages_flow_both_ways() {
        let (_, mut to_bob, _, mut to_alice) = pair();
        for i in 0..20u8 {
            let m = to_alice.encrypt(&[i; 100]).unwrap();
            assert_eq!(to_bob.decrypt(&m).unwrap().as_slice(), &[i; 100]);
            let r = to_bob.encrypt(&[i, i]).unwrap();
            assert_eq!(to_alice.decrypt(&r).unwrap().as_slice(), &[i, i]);
        }
        assert_eq!(to_bob.id(), to_alice.id());
    }

    #[test]
    fn forward_secrecy_a_captured_message_cannot_be_opened_later() {
        let (_, mut to_bob, _, mut to_alice) = pair();
        // An eavesdropper captures this ciphertext.
        let captured = to_bob.encrypt(b"the old secret").unwrap();
        assert_eq!(
            to_alice.decrypt(&captured).unwrap().as_slice(),
            b"the old secret"
        );
        // The conversation moves on; both ratchets advance.
        for _ in 0..3 {
            let m = to_alice.encrypt(b"reply").unwrap();
            to_bob.decrypt(&m).unwrap();
            let m = to_bob.encrypt(b"again").unwrap();
            to_alice.decrypt(&m).unwrap();
        }
        // Later the eavesdropper takes bob's current state (here: a copy
        // through the store's pickle) and tries the captured ciphertext.
        let key = [7u8; 32];
        let mut stolen = PairSession::from_pickle(&to_alice.to_pickle(&key), &key).unwrap();
        assert!(matches!(
            stolen.decrypt(&captured),
            Err(SessionError::Decrypt(_))
        ));
        assert!(matches!(
            to_alice.decrypt(&captured),
            Err(SessionError::Decrypt(_))
        ));
    }

    #[test]
    fn prekeys_round_trip_and_rotate() {
        let mut bob = DeviceSecrets::new();
        let before = bob.prekeys();
        assert_ne!(before.fallback, [0u8; 32]);
        assert_eq!(Prekeys::decode(&before.encode()).unwrap(), before);
        bob.rotate_fallback_key();
        let after = bob.prekeys();
        assert_eq!(after.identity, before.identity);
        assert_ne!(after.fallback, before.fallback);
        // A session started from the old fallback key still opens.
        let alice = DeviceSecrets::new();
        let mut to_bob = alice.start_session(&before).unwrap();
        let first = to_bob.encrypt(b"late").unwrap();
        let (_, plain) = bob
            .accept_session(&alice.prekeys().identity, &first)
            .unwrap();
        assert_eq!(plain.as_slice(), b"late");
    }

    #[test]
    fn a_replayed_first_message_is_recognised_as_belonging_to_its_session() {
        let alice = DeviceSecrets::new();
        let mut bob = DeviceSecrets::new();
        let mut to_bob = alice.start_session(&bob.prekeys()).unwrap();
        let first = to_bob.encrypt(b"hello").unwrap();
        let (mut to_alice, _) = bob
            .accept_session(&alice.prekeys().identity, &first)
            .unwrap();
        // The replay is owned by the existing session, which refuses it (its
        // key is used up), so no second session is ever created.
        assert!(to_alice.owns(&first));
        assert!(matches!(
            to_alice.decrypt(&first),
            Err(SessionError::Decrypt(_))
        ));
        // A first message of another session, or a normal message, is not.
        let other = DeviceSecrets::new()
            .start_session(&bob.prekeys())
            .unwrap()
            .encrypt(b"x")
            .unwrap();
        assert!(!to_alice.owns(&other));
        let normal = to_alice.encrypt(b"reply").unwrap();
        assert!(!to_alice.owns(&normal));
        assert!(!to_alice.owns(b"junk"));
    }

    #[test]
    fn out_of_order_messages_still_open() {
        let (_, mut to_bob, _, mut to_alice) = pair();
        let a = to_bob.encrypt(b"one").unwrap();
        let b = to_bob.encrypt(b"two").unwrap();
        assert_eq!(to_alice.decrypt(&b).unwrap().as_slice(), b"two");
        assert_eq!(to_alice.decrypt(&a).unwrap().as_slice(), b"one");
    }

    #[test]
    fn state_survives_a_restart_through_pickles() {
        let (alice, mut to_bob, bob, to_alice) = pair();
        let key = [3u8; 32];
        let bob_again = DeviceSecrets::from_pickle(&bob.to_pickle(&key), &key).unwrap();
        assert_eq!(bob_again.prekeys(), bob.prekeys());
        let mut to_alice = PairSession::from_pickle(&to_alice.to_pickle(&key), &key).unwrap();
        let m = to_bob.encrypt(b"after restart").unwrap();
        assert_eq!(to_alice.decrypt(&m).unwrap().as_slice(), b"after restart");
        let wrong = [4u8; 32];
        assert!(matches!(
            DeviceSecrets::from_pickle(&alice.to_pickle(&key), &wrong),
            Err(SessionError::Pickle(_))
        ));
    }

    #[test]
    fn strangers_and_bad_bytes_are_refused() {
        let (_, mut to_bob, _, mut to_alice) = pair();
        let (_, _, _, mut other) = pair();
        let m = to_bob.encrypt(b"for alice's session only").unwrap();
        assert!(matches!(other.decrypt(&m), Err(SessionError::Decrypt(_))));
        assert!(matches!(
            to_alice.decrypt(&[]),
            Err(SessionError::Malformed(_))
        ));
        assert!(matches!(
            to_alice.decrypt(&[9, 1, 2]),
            Err(SessionError::Malformed(_))
        ));
        assert!(matches!(
            to_alice.decrypt(&vec![1u8; MAX_MESSAGE_BYTES + 1]),
            Err(SessionError::TooLarge { .. })
        ));
        let mut carol = DeviceSecrets::new();
        // The starter sends pre-key messages until it hears back; the
        // responder's messages are normal ones.
        let normal = to_alice.encrypt(b"x").unwrap();
        assert_eq!(
            carol.accept_session(&[1; 32], &normal).unwrap_err(),
            SessionError::NotPreKey
        );
        assert!(Prekeys::decode(&[1; 10]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let (_, _, mut bob, mut to_alice) = pair();
            let _ = to_alice.decrypt(&bytes);
            let _ = bob.accept_session(&[5; 32], &bytes);
            let _ = Prekeys::decode(&bytes);
        }
    }
}
