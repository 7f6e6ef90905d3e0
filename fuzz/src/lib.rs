//! What the fuzz targets (`fuzz_targets/*.rs`) and the seed generator
//! (`examples/seeds.rs`) share: fixed keys, a fixed clock, and sealers
//! written from the documented byte layouts.
//!
//! Two decoders sit behind an AEAD check: the inner layer of a sealed
//! envelope (`docs/protocol.md`, "Sealed envelope") and the opened form of a
//! link bundle (`docs/devices.md`, "Link bundle"). Random bytes never get
//! past the tag, so the targets seal the fuzzer's bytes themselves, by the
//! layout the docs give, and hand the result to the real public `open`.
//! These sealers are independent of the crates' own (which are private and
//! take only well-formed values); that they agree with `open` is itself
//! checked by the seeds, which must open.

use std::sync::OnceLock;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use kith_proto::identity::{AccountKeypair, AccountPublicKey, DeviceKeypair};
use kith_proto::link::LinkSecret;
use libp2p_identity::PeerId;
use sha2::Sha256;

/// The Unix time (seconds) every target checks expiries against.
pub const NOW: u64 = 1_800_000_000;

/// The ephemeral X25519 secret [`seal_envelope_inner`] uses.
const EPHEMERAL_SECRET: [u8; 32] = [0x5e; 32];
/// The nonce [`seal_bundle`] uses.
pub const BUNDLE_NONCE: [u8; 24] = [0x24; 24];

/// The account every envelope, mailbox item and presence record is for.
/// Made once: deriving a key under the sanitizer costs more than a run.
pub fn recipient() -> &'static AccountKeypair {
    static KEY: OnceLock<AccountKeypair> = OnceLock::new();
    KEY.get_or_init(|| AccountKeypair::from_secret_bytes(&[0x11; 32]))
}

/// The account that sends them.
pub fn sender() -> &'static AccountKeypair {
    static KEY: OnceLock<AccountKeypair> = OnceLock::new();
    KEY.get_or_init(|| AccountKeypair::from_secret_bytes(&[0x22; 32]))
}

/// A device key from a seed byte.
pub fn device(seed: u8) -> DeviceKeypair {
    // A 32-byte Ed25519 seed is always accepted.
    #[allow(clippy::expect_used)]
    let keypair =
        libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).expect("32-byte ed25519 seed");
    DeviceKeypair::from(keypair)
}

/// The new device of every link bundle and link code.
pub fn new_device() -> PeerId {
    static PEER: OnceLock<PeerId> = OnceLock::new();
    *PEER.get_or_init(|| device(0x33).peer_id())
}

/// The link secret of every link bundle.
pub fn link_secret() -> LinkSecret {
    LinkSecret::from_bytes([0x42; 32])
}

fn ephemeral() -> (x25519_dalek::StaticSecret, [u8; 32]) {
    let secret = x25519_dalek::StaticSecret::from(EPHEMERAL_SECRET);
    let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    (secret, public)
}

/// The inner layer of an envelope from `sender` to `recipient` sealed by
/// [`seal_envelope_inner`]: sender key ‖ signature ‖ payload, the signature
/// over `"kith/envelope/v1/sig" ‖ R ‖ E ‖ payload`.
pub fn envelope_inner(
    sender: &AccountKeypair,
    recipient: &AccountPublicKey,
    payload: &[u8],
) -> Vec<u8> {
    let (_, e) = ephemeral();
    let mut signed = b"kith/envelope/v1/sig".to_vec();
    signed.extend_from_slice(&recipient.to_bytes());
    signed.extend_from_slice(&e);
    signed.extend_from_slice(payload);
    let mut inner = sender.public().to_bytes().to_vec();
    inner.extend_from_slice(&sender.sign(&signed).0);
    inner.extend_from_slice(payload);
    inner
}

/// Seals `inner` (any bytes) to `recipient` as `docs/protocol.md` lays an
/// envelope out, with a fixed ephemeral key: `0x01 ‖ E ‖ XChaCha20-Poly1305`
/// under the HKDF-SHA256 key and nonce of the X25519 agreement.
pub fn seal_envelope_inner(recipient: &AccountPublicKey, inner: &[u8]) -> Vec<u8> {
    let (secret, e) = ephemeral();
    let recipient_x = recipient.to_x25519();
    let shared = secret.diffie_hellman(&recipient_x);
    let kdf = Hkdf::<Sha256>::new(Some(b"kith/envelope/v1/kdf"), shared.as_bytes());
    let mut info = e.to_vec();
    info.extend_from_slice(recipient_x.as_bytes());
    let mut okm = [0u8; 56];
    let mut nonce = [0u8; 24];
    let mut header = vec![1u8];
    header.extend_from_slice(&e);
    // Lengths within HKDF-SHA256's output limit and the cipher's key size;
    // encrypting into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    {
        kdf.expand(&info, &mut okm).expect("56 bytes of HKDF");
        nonce.copy_from_slice(&okm[32..]);
        let cipher = XChaCha20Poly1305::new_from_slice(&okm[..32]).expect("32-byte key");
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: inner,
                    aad: &header,
                },
            )
            .expect("encrypts");
        header.extend_from_slice(&sealed);
    }
    header
}

fn bundle_cipher(secret: &LinkSecret, new_device: &PeerId) -> XChaCha20Poly1305 {
    let kdf = Hkdf::<Sha256>::new(Some(b"kith/link/v1/bundle"), secret.as_bytes());
    let mut key = [0u8; 32];
    #[allow(clippy::expect_used)]
    {
        kdf.expand(&new_device.to_bytes(), &mut key)
            .expect("32 bytes of HKDF");
        XChaCha20Poly1305::new_from_slice(&key).expect("32-byte key")
    }
}

/// Seals `opened` (any bytes) for `new_device` under `secret` as
/// `docs/devices.md` lays a link bundle out: `0x01 ‖ nonce ‖
/// XChaCha20-Poly1305(key, nonce, opened, aad = 0x01)`, with
/// [`BUNDLE_NONCE`].
pub fn seal_bundle(secret: &LinkSecret, new_device: &PeerId, opened: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&BUNDLE_NONCE);
    #[allow(clippy::expect_used)]
    let sealed = bundle_cipher(secret, new_device)
        .encrypt(
            &XNonce::from(BUNDLE_NONCE),
            Payload {
                msg: opened,
                aad: &[1],
            },
        )
        .expect("encrypts");
    out.extend_from_slice(&sealed);
    out
}

/// The opened form of a sealed link bundle, or `None` if it does not open.
pub fn open_bundle(secret: &LinkSecret, new_device: &PeerId, sealed: &[u8]) -> Option<Vec<u8>> {
    let nonce: [u8; 24] = sealed.get(1..25)?.try_into().ok()?;
    bundle_cipher(secret, new_device)
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: sealed.get(25..)?,
                aad: &[1],
            },
        )
        .ok()
}
