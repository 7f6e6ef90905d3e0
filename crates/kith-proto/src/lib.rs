//! The vocabulary every other Kith crate speaks, with no I/O and no async.
//!
//! - [`identity`]: the account key (Ed25519, shared by a person's linked
//!   devices) and the device key (a libp2p keypair, one per computer). Secret
//!   halves are zeroized when dropped.
//! - [`id`]: the Kith ID people share — version, account key, nospam and
//!   checksum — as 63 case-insensitive characters, a `kith:` link, or a QR
//!   code ([`qr`]), with parse errors that say what the person got wrong.
//! - [`safety`]: the safety number two friends compare out of band.
//! - [`wire`]: versioned, size-limited message types (friend request and
//!   acceptance with contact cards, chat message, receipt, typing, edit,
//!   delete) in a compact postcard encoding.
//! - [`presence`]: presence records, the DHT entries that tell friends (and
//!   only friends) where a person's devices can be reached.
//! - [`request_drop`]: request drops, the DHT records where strangers who
//!   hold someone's Kith ID leave sealed friend requests.
//! - [`envelope`]: sealed envelopes for one-off items (friend requests,
//!   mailbox contents): X25519 ephemeral-static agreement, HKDF-SHA256 and
//!   XChaCha20-Poly1305 around a payload signed by the sender's account key.
//! - [`mailbox`]: offline mail: mailbox addresses, items signed by one-time
//!   keys with a proof of work, sender stamps, witness receipts, fetch
//!   challenges, acknowledgements and typed deposit refusals (layouts in
//!   `docs/mailbox.md`).
//! - [`devices`]: the account's signed device list, newest sequence wins
//!   (`docs/devices.md`).
//! - [`link`]: linking a new computer: the link code it shows (text and
//!   QR, expiring), the mutual proof of the code's secret, and the sealed
//!   bundle an existing device hands over (`docs/devices.md`).
//!
//! Byte layouts are specified in `docs/protocol.md`; golden fixtures under
//! `tests/fixtures/` keep them from changing by accident.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod devices;
pub mod envelope;
pub mod id;
pub mod identity;
pub mod link;
pub mod mailbox;
pub mod presence;
pub mod qr;
pub mod request_drop;
pub mod safety;
pub mod wire;

mod base32;
mod random;

pub use devices::{DeviceList, ListedDevice, SignedDeviceList};
pub use id::{KithId, KithIdError, Nospam};
pub use identity::{AccountKeypair, AccountPublicKey, DeviceKeypair, Signature};
pub use link::{LinkBundle, LinkCode, LinkSecret};
pub use random::random_bytes;
