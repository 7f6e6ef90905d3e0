//! The device-link protocol as two I/O-free state machines: [`Linker`] on
//! the existing device E (which read the code), [`Joiner`] on the new device
//! N (which showed it). No networking, no async, no clocks: the caller
//! moves byte vectors over a Noise-authenticated request-response stream
//! and passes the time in as Unix seconds.
//!
//! Data flows like this (E sends requests, N answers each one):
//!
//! 1. E: [`Linker::new`] checks the code by E's clock and gives the
//!    [`LinkRequest::Hello`] frame (a fresh nonce). N: [`Joiner::on_request`]
//!    answers [`LinkResponse::Challenge`] (its own fresh nonce), kept for
//!    that peer only and usable once.
//! 2. E: [`Linker::offer`] reads the challenge and gives the
//!    [`LinkRequest::Offer`] frame: E's [`link_proof`] and the
//!    [`LinkBundle`] sealed for N. N checks the proof in constant time,
//!    opens the bundle and returns [`JoinStep::Offered`]: the caller shows
//!    the account (display name, Kith ID) and asks its user.
//! 3. N: [`Joiner::accept`] gives the [`LinkResponse::Accepted`] frame
//!    (N's proof) and the bundle to commit; [`Joiner::decline`] a refusal.
//!    E: [`Linker::finish`] checks N's proof and only then returns
//!    [`Linked`], which nothing else can make.
//!
//! Every frame is [`LINK_FRAME`], [`LINK_WIRE_VERSION`], a kind byte and
//! fixed-width fields ([`is_link_frame`] routes them apart from kith-core's
//! frames); decoders check the size first and refuse trailing bytes. N
//! refuses everything once its code has expired by its own clock, keeps at
//! most [`MAX_CHALLENGES`] challenges, and gives up after
//! [`MAX_FAILED_ATTEMPTS`] failed offers. Layouts and rules:
//! `docs/devices.md`, "Link protocol (as built)".

use std::collections::VecDeque;
use std::fmt;

use kith_proto::link::{
    BundleError, LINK_NONCE_LEN, LINK_PROOF_LEN, LinkCodeError, LinkRole, MAX_SEALED_BUNDLE_BYTES,
    MAX_SYNC_BYTES, link_proof, verify_link_proof,
};
use kith_proto::{KithId, LinkBundle, LinkCode, LinkSecret, random_bytes};
use libp2p_identity::PeerId;

/// First byte of every link frame, request or response (`'L'`). kith-core's
/// frames start with their version byte `0x01`, so the two never collide.
pub const LINK_FRAME: u8 = 0x4c;
/// The link protocol version this build speaks: the second byte of every
/// link frame.
pub const LINK_WIRE_VERSION: u8 = 1;
/// Largest request frame, in bytes; larger ones are refused unread.
pub const MAX_LINK_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response frame, in bytes; larger ones are refused unread.
pub const MAX_LINK_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest sealed bundle an [`LinkRequest::Offer`] carries: the request
/// limit less the header, the proof and the length prefix.
pub const MAX_OFFER_BUNDLE_BYTES: usize =
    MAX_LINK_REQUEST_BYTES - HEADER_LEN - LINK_PROOF_LEN - BUNDLE_LEN_BYTES;
/// Largest op-log batch a bundle may carry to fit in an offer: what a
/// bundle with the longest display name and device list leaves of
/// [`MAX_OFFER_BUNDLE_BYTES`]. Smaller than `kith_proto`'s
/// [`MAX_SYNC_BYTES`]; history beyond it follows through normal sync.
pub const MAX_LINK_SYNC_BYTES: usize =
    MAX_OFFER_BUNDLE_BYTES - (MAX_SEALED_BUNDLE_BYTES - MAX_SYNC_BYTES);
/// Most peers the new device holds a challenge for at once. A Hello from a
/// further peer is refused [`LinkRefusal::Busy`] unless a stale challenge
/// can be dropped.
pub const MAX_CHALLENGES: usize = 4;
/// How long a challenge stays usable, seconds: an Offer after this is
/// refused [`LinkRefusal::NoChallenge`], and a full table drops such
/// challenges first.
pub const CHALLENGE_TTL_SECS: u64 = 60;
/// Failed offers (a wrong proof, a bundle that does not open or check, a
/// declined account) after which the new device gives up on its code and
/// answers everything [`LinkRefusal::Finished`].
pub const MAX_FAILED_ATTEMPTS: u32 = 5;

const HEADER_LEN: usize = 3;
const BUNDLE_LEN_BYTES: usize = 4;

// Response kinds have the high bit set, so no response frame reads as a
// request (a challenge sent back as a Hello, say).
const KIND_HELLO: u8 = 0x01;
const KIND_OFFER: u8 = 0x02;
const KIND_CHALLENGE: u8 = 0x81;
const KIND_ACCEPTED: u8 = 0x82;
const KIND_REFUSED: u8 = 0x83;

// ------------------------------------------------------------------ wire

/// Why bytes are not a link frame of the expected direction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkWireError {
    /// No bytes at all.
    #[error("empty link frame")]
    Empty,
    /// Over the direction's size limit; refused unread.
    #[error("link frame of {found} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The first byte is not [`LINK_FRAME`].
    #[error("not a link frame (first byte {found:#04x})")]
    NotLinkFrame {
        /// The first byte found.
        found: u8,
    },
    /// A link protocol version this build does not speak.
    #[error(
        "link protocol version {found} is not supported (this build speaks {LINK_WIRE_VERSION}): update Kith on both devices"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// A kind byte no frame of this direction has.
    #[error("unknown link frame kind {found}")]
    UnknownKind {
        /// The kind byte found.
        found: u8,
    },
    /// The frame ends before its fields do.
    #[error("truncated link frame")]
    Truncated,
    /// The frame has bytes after its last field.
    #[error("{count} unexpected bytes after the link frame")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// Why the new device refused a request. Travels as one byte; a byte this
/// build does not know reads as [`LinkRefusal::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkRefusal {
    /// The code has expired by the new device's clock.
    Expired,
    /// The proof was not made with the code's secret for this connection
    /// and exchange.
    BadProof,
    /// The request or its bundle could not be read, opened or checked.
    Unreadable,
    /// An Offer without a usable challenge: no Hello from that peer, a
    /// challenge already used, or one older than [`CHALLENGE_TTL_SECS`].
    NoChallenge,
    /// Too many link attempts in progress; try again shortly.
    Busy,
    /// The new device's user did not accept the account offered.
    Declined,
    /// The new device has linked already, or gave up on its code.
    Finished,
    /// A reason this build does not know (only ever made by decoding).
    Unknown(u8),
}

impl LinkRefusal {
    fn byte(self) -> u8 {
        match self {
            Self::Expired => 1,
            Self::BadProof => 2,
            Self::Unreadable => 3,
            Self::NoChallenge => 4,
            Self::Busy => 5,
            Self::Declined => 6,
            Self::Finished => 7,
            Self::Unknown(byte) => byte,
        }
    }

    fn from_byte(byte: u8) -> Self {
        match byte {
            1 => Self::Expired,
            2 => Self::BadProof,
            3 => Self::Unreadable,
            4 => Self::NoChallenge,
            5 => Self::Busy,
            6 => Self::Declined,
            7 => Self::Finished,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for LinkRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => f.write_str("the link code has expired: make a new one"),
            Self::BadProof => f.write_str(
                "this is not the code the new device shows (an old code, or another device's)",
            ),
            Self::Unreadable => f.write_str("the new device could not read what was sent"),
            Self::NoChallenge => f.write_str("the link exchange was out of step: try again"),
            Self::Busy => f.write_str("the new device is busy with other link attempts"),
            Self::Declined => f.write_str("the new device's user declined the account"),
            Self::Finished => {
                f.write_str("the new device has linked already or no longer takes this code")
            }
            Self::Unknown(byte) => {
                write!(f, "refused for a reason this Kith does not know ({byte})")
            }
        }
    }
}

/// A request, existing device to new device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    /// Opens an exchange.
    Hello {
        /// The existing device's fresh nonce.
        nonce_e: [u8; LINK_NONCE_LEN],
    },
    /// Proves the secret and hands over the account.
    Offer {
        /// [`link_proof`] with role existing.
        proof_e: [u8; LINK_PROOF_LEN],
        /// [`LinkBundle::seal`] for the new device, at most
        /// [`MAX_OFFER_BUNDLE_BYTES`].
        sealed_bundle: Vec<u8>,
    },
}

impl LinkRequest {
    /// The frame; refuses an Offer whose bundle is over
    /// [`MAX_OFFER_BUNDLE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, LinkWireError> {
        match self {
            Self::Hello { nonce_e } => Ok(frame(KIND_HELLO, nonce_e)),
            Self::Offer {
                proof_e,
                sealed_bundle,
            } => {
                if sealed_bundle.len() > MAX_OFFER_BUNDLE_BYTES {
                    return Err(LinkWireError::TooLarge {
                        found: HEADER_LEN + LINK_PROOF_LEN + BUNDLE_LEN_BYTES + sealed_bundle.len(),
                        max: MAX_LINK_REQUEST_BYTES,
                    });
                }
                let mut out = Vec::with_capacity(
                    HEADER_LEN + LINK_PROOF_LEN + BUNDLE_LEN_BYTES + sealed_bundle.len(),
                );
                out.extend_from_slice(&[LINK_FRAME, LINK_WIRE_VERSION, KIND_OFFER]);
                out.extend_from_slice(proof_e);
                // Within MAX_OFFER_BUNDLE_BYTES, so within u32.
                let len = u32::try_from(sealed_bundle.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(sealed_bundle);
                Ok(out)
            }
        }
    }

    /// Reads a request frame: size first, then frame byte, version, kind
    /// and fields; no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, LinkWireError> {
        let (kind, mut r) = open_frame(bytes, MAX_LINK_REQUEST_BYTES)?;
        let request = match kind {
            KIND_HELLO => Self::Hello {
                nonce_e: r.array()?,
            },
            KIND_OFFER => {
                let proof_e = r.array()?;
                let len = usize::try_from(u32::from_be_bytes(r.array()?)).unwrap_or(usize::MAX);
                Self::Offer {
                    proof_e,
                    sealed_bundle: r.take(len)?.to_vec(),
                }
            }
            found => return Err(LinkWireError::UnknownKind { found }),
        };
        r.end()?;
        Ok(request)
    }
}

/// A response, new device to existing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkResponse {
    /// Answers a Hello.
    Challenge {
        /// The new device's fresh nonce.
        nonce_n: [u8; LINK_NONCE_LEN],
    },
    /// Answers an Offer the new device's user accepted.
    Accepted {
        /// [`link_proof`] with role new.
        proof_n: [u8; LINK_PROOF_LEN],
    },
    /// Answers any request the new device will not go on with.
    Refused(LinkRefusal),
}

impl LinkResponse {
    /// The frame (responses have no variable-length field, so this cannot
    /// fail).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Challenge { nonce_n } => frame(KIND_CHALLENGE, nonce_n),
            Self::Accepted { proof_n } => frame(KIND_ACCEPTED, proof_n),
            Self::Refused(reason) => frame(KIND_REFUSED, &[reason.byte()]),
        }
    }

    /// Reads a response frame: size first, then frame byte, version, kind
    /// and fields; no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, LinkWireError> {
        let (kind, mut r) = open_frame(bytes, MAX_LINK_RESPONSE_BYTES)?;
        let response = match kind {
            KIND_CHALLENGE => Self::Challenge {
                nonce_n: r.array()?,
            },
            KIND_ACCEPTED => Self::Accepted {
                proof_n: r.array()?,
            },
            KIND_REFUSED => Self::Refused(LinkRefusal::from_byte(r.array::<1>()?[0])),
            found => return Err(LinkWireError::UnknownKind { found }),
        };
        r.end()?;
        Ok(response)
    }
}

/// Whether `bytes` claim to be a link frame (their first byte is
/// [`LINK_FRAME`]), for a receiver that routes frames of several protocols.
/// Says nothing about whether they decode.
pub fn is_link_frame(bytes: &[u8]) -> bool {
    bytes.first() == Some(&LINK_FRAME)
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[LINK_FRAME, LINK_WIRE_VERSION, kind]);
    out.extend_from_slice(body);
    out
}

/// Checks size, frame byte and version; returns the kind and a reader over
/// the fields.
fn open_frame(bytes: &[u8], max: usize) -> Result<(u8, Reader<'_>), LinkWireError> {
    if bytes.len() > max {
        return Err(LinkWireError::TooLarge {
            found: bytes.len(),
            max,
        });
    }
    let mut r = Reader(bytes);
    let [first] = r.array().map_err(|_| LinkWireError::Empty)?;
    if first != LINK_FRAME {
        return Err(LinkWireError::NotLinkFrame { found: first });
    }
    let [version] = r.array()?;
    if version != LINK_WIRE_VERSION {
        return Err(LinkWireError::UnknownVersion { found: version });
    }
    let [kind] = r.array()?;
    Ok((kind, r))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], LinkWireError> {
        if len > self.0.len() {
            return Err(LinkWireError::Truncated);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LinkWireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn end(&self) -> Result<(), LinkWireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(LinkWireError::TrailingBytes {
                count: self.0.len(),
            })
        }
    }
}

// ------------------------------------------------------- existing device

/// Why linking failed on the existing device. Nothing has been committed
/// when any of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The code is expired (or claims too long a life) by this device's
    /// clock.
    #[error(transparent)]
    Code(#[from] LinkCodeError),
    /// The new device's response is not a link response.
    #[error("the new device's answer could not be read: {0}")]
    Wire(#[from] LinkWireError),
    /// The new device refused.
    #[error("the new device refused: {0}")]
    Refused(LinkRefusal),
    /// A well-formed response that does not answer the request sent (an
    /// acceptance in answer to a Hello, a challenge in answer to an Offer).
    #[error("the new device answered out of turn")]
    UnexpectedResponse,
    /// The bundle could not be sealed (it breaks a limit, or its device
    /// list does not verify or does not name the new device).
    #[error("the account could not be packed for the new device: {0}")]
    Bundle(#[from] BundleError),
    /// The sealed bundle does not fit in an offer; send less history
    /// ([`MAX_LINK_SYNC_BYTES`]).
    #[error("the sealed account is {found} bytes, over the {max}-byte limit of a link offer")]
    BundleTooLarge {
        /// Sealed bytes.
        found: usize,
        /// The limit, [`MAX_OFFER_BUNDLE_BYTES`].
        max: usize,
    },
    /// The new device's proof is wrong: it does not hold the code's secret
    /// (or answered for another exchange).
    #[error("the new device could not prove it showed this link code")]
    BadProof,
    /// [`Linker::offer`] called a second time, or after an error.
    #[error("this link attempt is over: start again")]
    OutOfOrder,
}

#[derive(Debug)]
enum LinkerState {
    AwaitChallenge,
    AwaitAnswer { nonce_n: [u8; LINK_NONCE_LEN] },
    Spent,
}

/// The existing device's side of one link attempt. Made from the code the
/// user entered; one Hello, one Offer, one answer, in that order. Any
/// error spends it; start again with a new one.
#[derive(Debug)]
pub struct Linker {
    secret: LinkSecret,
    me: PeerId,
    new_device: PeerId,
    nonce_e: [u8; LINK_NONCE_LEN],
    state: LinkerState,
}

impl Linker {
    /// Starts linking the device that shows `code`, as `me` (the `PeerId`
    /// this device presents on the connection). Checks the code by this
    /// device's clock (`now`, Unix seconds) with [`LinkCode::check`], so an
    /// expired code fails here, before any dialling; the new device
    /// enforces the expiry again by its own clock. Returns the Linker and
    /// the Hello frame to send to [`Linker::new_device`].
    pub fn new(code: &LinkCode, me: PeerId, now: u64) -> Result<(Self, Vec<u8>), LinkError> {
        code.check(now)?;
        let nonce_e = random_bytes();
        let linker = Self {
            secret: code.secret().clone(),
            me,
            new_device: code.peer_id(),
            nonce_e,
            state: LinkerState::AwaitChallenge,
        };
        Ok((linker, frame(KIND_HELLO, &nonce_e)))
    }

    /// The peer to send the requests to: the device that made the code.
    pub fn new_device(&self) -> PeerId {
        self.new_device
    }

    /// Reads the new device's answer to the Hello and returns the Offer
    /// frame: this device's proof and `bundle` sealed for the new device.
    /// `bundle` must be checkable for it ([`LinkBundle::check`]: its device
    /// list names the new device) and its sealed form must fit
    /// [`MAX_OFFER_BUNDLE_BYTES`].
    pub fn offer(
        &mut self,
        challenge_response: &[u8],
        bundle: &LinkBundle,
    ) -> Result<Vec<u8>, LinkError> {
        let state = std::mem::replace(&mut self.state, LinkerState::Spent);
        if !matches!(state, LinkerState::AwaitChallenge) {
            return Err(LinkError::OutOfOrder);
        }
        let nonce_n = match LinkResponse::decode(challenge_response)? {
            LinkResponse::Challenge { nonce_n } => nonce_n,
            LinkResponse::Refused(reason) => return Err(LinkError::Refused(reason)),
            LinkResponse::Accepted { .. } => return Err(LinkError::UnexpectedResponse),
        };
        let sealed_bundle = bundle.seal(&self.secret, &self.new_device)?;
        if sealed_bundle.len() > MAX_OFFER_BUNDLE_BYTES {
            return Err(LinkError::BundleTooLarge {
                found: sealed_bundle.len(),
                max: MAX_OFFER_BUNDLE_BYTES,
            });
        }
        let proof_e = link_proof(
            &self.secret,
            LinkRole::Existing,
            &self.me,
            &self.new_device,
            &self.nonce_e,
            &nonce_n,
        );
        let request = LinkRequest::Offer {
            proof_e,
            sealed_bundle,
        }
        .encode()?;
        self.state = LinkerState::AwaitAnswer { nonce_n };
        Ok(request)
    }

    /// Reads the new device's answer to the Offer and checks its proof.
    /// [`Linked`] is returned only when the new device proved the secret
    /// for this connection and exchange; only then may this device store
    /// and publish the new device list.
    pub fn finish(self, answer_response: &[u8]) -> Result<Linked, LinkError> {
        let LinkerState::AwaitAnswer { nonce_n } = self.state else {
            return Err(LinkError::OutOfOrder);
        };
        let proof_n = match LinkResponse::decode(answer_response)? {
            LinkResponse::Accepted { proof_n } => proof_n,
            LinkResponse::Refused(reason) => return Err(LinkError::Refused(reason)),
            LinkResponse::Challenge { .. } => return Err(LinkError::UnexpectedResponse),
        };
        verify_link_proof(
            &self.secret,
            LinkRole::New,
            &self.me,
            &self.new_device,
            &self.nonce_e,
            &nonce_n,
            &proof_n,
        )
        .map_err(|_| LinkError::BadProof)?;
        Ok(Linked {
            new_device: self.new_device,
        })
    }
}

/// Proof that the new device accepted and proved the code's secret: only
/// [`Linker::finish`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Linked {
    new_device: PeerId,
}

impl Linked {
    /// The device now linked: the one the new device list names.
    pub fn new_device(&self) -> PeerId {
        self.new_device
    }
}

// ------------------------------------------------------------ new device

/// What the new device does with one request.
#[derive(Debug)]
pub enum JoinStep {
    /// Send these bytes back as the response.
    Respond(Vec<u8>),
    /// A proven offer: hold the request, show the account to the user, and
    /// answer with [`Joiner::accept`] or [`Joiner::decline`].
    Offered(PendingOffer),
}

/// An offer whose proof checked and whose bundle opened and checked,
/// waiting for the user. Only [`Joiner::on_request`] makes one.
#[derive(Debug)]
pub struct PendingOffer {
    from: PeerId,
    nonce_e: [u8; LINK_NONCE_LEN],
    nonce_n: [u8; LINK_NONCE_LEN],
    // Boxed: a bundle is far larger than the other step.
    bundle: Box<LinkBundle>,
}

impl PendingOffer {
    /// The existing device that made the offer.
    pub fn from(&self) -> PeerId {
        self.from
    }

    /// The account offered: key, nospam, display name, device list and
    /// history.
    pub fn bundle(&self) -> &LinkBundle {
        &self.bundle
    }

    /// The account's display name, to show before accepting.
    pub fn display_name(&self) -> &str {
        &self.bundle.display_name
    }

    /// The account's Kith ID, to show before accepting.
    pub fn kith_id(&self) -> KithId {
        KithId::new(self.bundle.account.public(), self.bundle.nospam)
    }
}

/// Why [`Joiner::accept`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The offer is not the one this Joiner is waiting on (another
    /// Joiner's, or already answered).
    #[error("this link offer is not the one waiting for an answer")]
    NotPending,
}

/// Where the new device's link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinStatus {
    /// Taking requests.
    Listening,
    /// An offer waits for the user's answer; other requests are refused
    /// [`LinkRefusal::Busy`].
    Confirming,
    /// The code has expired.
    Expired,
    /// An offer was accepted.
    Linked,
    /// [`MAX_FAILED_ATTEMPTS`] offers failed; a new code is needed.
    GaveUp,
}

#[derive(Debug)]
struct Challenge {
    peer: PeerId,
    nonce_e: [u8; LINK_NONCE_LEN],
    nonce_n: [u8; LINK_NONCE_LEN],
    issued: u64,
}

impl Challenge {
    fn is_stale(&self, now: u64) -> bool {
        now >= self.issued.saturating_add(CHALLENGE_TTL_SECS)
    }
}

#[derive(Debug)]
enum JoinState {
    Listening,
    Confirming {
        from: PeerId,
        nonce_n: [u8; LINK_NONCE_LEN],
    },
    Linked,
    GaveUp,
}

/// The new device's side: answers requests for its code until one offer is
/// accepted, the code expires, or [`MAX_FAILED_ATTEMPTS`] offers fail.
/// Never panics on any input.
#[derive(Debug)]
pub struct Joiner {
    code: LinkCode,
    me: PeerId,
    challenges: VecDeque<Challenge>,
    failures: u32,
    state: JoinState,
}

impl Joiner {
    /// A Joiner for `code` (which holds the secret), as `me`, the device
    /// that made it.
    pub fn new(code: LinkCode, me: PeerId) -> Self {
        Self {
            code,
            me,
            challenges: VecDeque::with_capacity(MAX_CHALLENGES),
            failures: 0,
            state: JoinState::Listening,
        }
    }

    /// Where the link stands at Unix time `now`.
    pub fn status(&self, now: u64) -> JoinStatus {
        match self.state {
            JoinState::Linked => JoinStatus::Linked,
            JoinState::GaveUp => JoinStatus::GaveUp,
            JoinState::Confirming { .. } => JoinStatus::Confirming,
            JoinState::Listening if now >= self.code.expires() => JoinStatus::Expired,
            JoinState::Listening => JoinStatus::Listening,
        }
    }

    /// Offers that failed so far (wrong proofs, bundles that did not open or
    /// check, declines).
    pub fn failed_attempts(&self) -> u32 {
        self.failures
    }

    /// Answers one request frame from `from` (the `PeerId` Noise
    /// authenticated) at Unix time `now`. In order: a finished Joiner
    /// answers [`LinkRefusal::Finished`], an expired code
    /// [`LinkRefusal::Expired`], a waiting offer [`LinkRefusal::Busy`], an
    /// unreadable frame [`LinkRefusal::Unreadable`]; a Hello gets a
    /// challenge (or `Busy`), an Offer is checked against that peer's
    /// challenge, which it uses up.
    pub fn on_request(&mut self, from: PeerId, request: &[u8], now: u64) -> JoinStep {
        let refuse = |reason| JoinStep::Respond(LinkResponse::Refused(reason).encode());
        match self.state {
            JoinState::Linked | JoinState::GaveUp => return refuse(LinkRefusal::Finished),
            JoinState::Listening | JoinState::Confirming { .. } => {}
        }
        if now >= self.code.expires() {
            self.challenges.clear();
            return refuse(LinkRefusal::Expired);
        }
        if matches!(self.state, JoinState::Confirming { .. }) {
            return refuse(LinkRefusal::Busy);
        }
        match LinkRequest::decode(request) {
            Err(_) => refuse(LinkRefusal::Unreadable),
            Ok(LinkRequest::Hello { nonce_e }) => match self.challenge(from, nonce_e, now) {
                Some(nonce_n) => JoinStep::Respond(LinkResponse::Challenge { nonce_n }.encode()),
                None => refuse(LinkRefusal::Busy),
            },
            Ok(LinkRequest::Offer {
                proof_e,
                sealed_bundle,
            }) => match self.offered(from, &proof_e, &sealed_bundle, now) {
                Ok(offer) => JoinStep::Offered(offer),
                Err(reason) => refuse(reason),
            },
        }
    }

    /// Records a fresh challenge for `from`, replacing its earlier one;
    /// `None` when [`MAX_CHALLENGES`] other peers hold live ones.
    fn challenge(
        &mut self,
        from: PeerId,
        nonce_e: [u8; LINK_NONCE_LEN],
        now: u64,
    ) -> Option<[u8; LINK_NONCE_LEN]> {
        self.challenges
            .retain(|c| c.peer != from && !c.is_stale(now));
        if self.challenges.len() >= MAX_CHALLENGES {
            return None;
        }
        let nonce_n = random_bytes();
        self.challenges.push_back(Challenge {
            peer: from,
            nonce_e,
            nonce_n,
            issued: now,
        });
        Some(nonce_n)
    }

    fn offered(
        &mut self,
        from: PeerId,
        proof_e: &[u8; LINK_PROOF_LEN],
        sealed_bundle: &[u8],
        now: u64,
    ) -> Result<PendingOffer, LinkRefusal> {
        let at = self
            .challenges
            .iter()
            .position(|c| c.peer == from)
            .ok_or(LinkRefusal::NoChallenge)?;
        let challenge = self.challenges.remove(at).ok_or(LinkRefusal::NoChallenge)?;
        if challenge.is_stale(now) {
            return Err(LinkRefusal::NoChallenge);
        }
        let secret = self.code.secret();
        if verify_link_proof(
            secret,
            LinkRole::Existing,
            &from,
            &self.me,
            &challenge.nonce_e,
            &challenge.nonce_n,
            proof_e,
        )
        .is_err()
        {
            self.fail();
            return Err(LinkRefusal::BadProof);
        }
        let Ok(bundle) = LinkBundle::open(sealed_bundle, secret, &self.me) else {
            self.fail();
            return Err(LinkRefusal::Unreadable);
        };
        self.state = JoinState::Confirming {
            from,
            nonce_n: challenge.nonce_n,
        };
        Ok(PendingOffer {
            from,
            nonce_e: challenge.nonce_e,
            nonce_n: challenge.nonce_n,
            bundle: Box::new(bundle),
        })
    }

    fn fail(&mut self) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= MAX_FAILED_ATTEMPTS {
            self.end(JoinState::GaveUp);
        }
    }

    fn end(&mut self, state: JoinState) {
        self.state = state;
        self.challenges.clear();
    }

    fn is_waiting_on(&self, offer: &PendingOffer) -> bool {
        matches!(self.state, JoinState::Confirming { from, nonce_n }
            if from == offer.from && nonce_n == offer.nonce_n)
    }

    /// The user accepted `offer`: returns the Accepted frame (this device's
    /// proof) to send back and the bundle to commit. The Joiner is then
    /// finished and refuses everything [`LinkRefusal::Finished`]. Not
    /// checked against the clock: the offer was proven before the code
    /// expired.
    pub fn accept(&mut self, offer: PendingOffer) -> Result<(Vec<u8>, LinkBundle), JoinError> {
        if !self.is_waiting_on(&offer) {
            return Err(JoinError::NotPending);
        }
        let proof_n = link_proof(
            self.code.secret(),
            LinkRole::New,
            &offer.from,
            &self.me,
            &offer.nonce_e,
            &offer.nonce_n,
        );
        self.end(JoinState::Linked);
        Ok((LinkResponse::Accepted { proof_n }.encode(), *offer.bundle))
    }

    /// The user declined `offer`: returns the refusal to send back. The
    /// decline counts as a failed attempt (whoever offered holds the
    /// secret, so the code has leaked); until [`MAX_FAILED_ATTEMPTS`] the
    /// Joiner goes on listening.
    pub fn decline(&mut self, offer: PendingOffer) -> Vec<u8> {
        if self.is_waiting_on(&offer) {
            self.state = JoinState::Listening;
            self.fail();
        }
        LinkResponse::Refused(LinkRefusal::Declined).encode()
    }
}
