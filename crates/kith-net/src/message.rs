//! Request-response protocols with opaque payloads, one request and one
//! response per stream: direct device messaging (`/kith/msg/1.0.0`) and
//! offline mail (`/kith/mailbox/1.0.0`, [`MAILBOX_PROTOCOL`]), each with
//! its own size limits.
//!
//! Each request opens a new Yamux stream on an existing connection (or on
//! one dialled for it); the stream's protocol is negotiated lazily, so the
//! request travels with the negotiation and a round trip costs one network
//! round trip. A frame is a 4-byte big-endian length and that many bytes;
//! the reader checks the length against the protocol's limit
//! ([`MAX_REQUEST_BYTES`], [`MAX_RESPONSE_BYTES`] for messages) before
//! allocating anything, grows its buffer only as the bytes arrive (so a
//! peer that announces a large frame and stalls costs us little), and
//! fails with `UnexpectedEof` when the stream ends short of the length;
//! the writer refuses to send more.
//!
//! Inbound requests reach the application as [`InboundRequest`]s carrying a
//! one-shot responder; the event loop holds the libp2p response channel
//! until the responder answers, is dropped, or the request times out.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::oneshot;

/// The direct messaging protocol.
pub const MESSAGE_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/msg/1.0.0");
/// Largest request payload, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response payload, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The reader's first buffer for a frame's body; it then doubles as bytes
/// arrive, up to the frame's length.
const FIRST_READ_BYTES: usize = 1024;

/// Frames up to this size are written with their length in one write (one
/// Yamux frame); larger ones in two, rather than copied.
const COALESCE_BYTES: usize = 16 * 1024;

/// A request from another device, waiting for our answer.
///
/// Answer with [`InboundRequest::respond`]. Dropping it unanswered makes the
/// sender's request fail, as does holding it past the request timeout.
pub struct InboundRequest {
    /// The device that sent it.
    pub peer: PeerId,
    /// The payload (at most [`MAX_REQUEST_BYTES`]).
    pub data: Vec<u8>,
    responder: oneshot::Sender<Vec<u8>>,
}

impl InboundRequest {
    pub(crate) fn new(peer: PeerId, data: Vec<u8>, responder: oneshot::Sender<Vec<u8>>) -> Self {
        Self {
            peer,
            data,
            responder,
        }
    }

    /// Sends `data` back to the requester. Never blocks and never fails
    /// loudly: if the network has stopped or the request has timed out,
    /// nothing happens; a response over [`MAX_RESPONSE_BYTES`] is not sent
    /// and the requester gets an error instead.
    pub fn respond(self, data: Vec<u8>) {
        let _ = self.responder.send(data);
    }
}

impl std::fmt::Debug for InboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundRequest")
            .field("peer", &self.peer)
            .field("bytes", &self.data.len())
            .finish_non_exhaustive()
    }
}

/// A frame over its limit; carried inside the `io::Error` the codec
/// returns, so the event loop can report it as [`crate::NetError::TooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {size} bytes is over the {max}-byte limit")]
pub(crate) struct FrameTooLarge {
    pub(crate) size: usize,
    pub(crate) max: usize,
}

/// A stream that ended before the length its frame announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream ended after {read} of the {size} bytes its frame announced")]
pub(crate) struct FrameTruncated {
    size: usize,
    read: usize,
}

/// The offline-mail protocol (`kith-mailbox` defines its messages).
pub const MAILBOX_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/mailbox/1.0.0");
/// Largest mailbox request: a deposit or hand-off of the largest item with
/// its receipts.
pub const MAX_MAILBOX_REQUEST_BYTES: usize = 96 * 1024;
/// Largest mailbox response: one page of a fetch.
pub const MAX_MAILBOX_RESPONSE_BYTES: usize = 1536 * 1024;

/// Length-prefixed frames with a bound per direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec {
    max_request: usize,
    max_response: usize,
}

impl Codec {
    /// The codec of `channel`'s protocol.
    pub(crate) fn of(channel: Channel) -> Self {
        Self {
            max_request: channel.max_request(),
            max_response: channel.max_response(),
        }
    }
}

/// The two request-response protocols: direct messages between devices,
/// and offline mail between clients and volunteers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// [`MESSAGE_PROTOCOL`].
    Message,
    /// [`MAILBOX_PROTOCOL`].
    Mailbox,
}

impl Channel {
    pub(crate) fn protocol(self) -> StreamProtocol {
        match self {
            Channel::Message => MESSAGE_PROTOCOL,
            Channel::Mailbox => MAILBOX_PROTOCOL,
        }
    }

    pub(crate) fn max_request(self) -> usize {
        match self {
            Channel::Message => MAX_REQUEST_BYTES,
            Channel::Mailbox => MAX_MAILBOX_REQUEST_BYTES,
        }
    }

    pub(crate) fn max_response(self) -> usize {
        match self {
            Channel::Message => MAX_RESPONSE_BYTES,
            Channel::Mailbox => MAX_MAILBOX_RESPONSE_BYTES,
        }
    }
}

async fn read_frame<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await?;
    let size = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if size > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameTooLarge { size, max },
        ));
    }
    // The buffer grows with what has arrived, never past `size`: a peer
    // that sends a large length and then stalls holds at most
    // `FIRST_READ_BYTES` here, not the whole frame.
    let mut data = Vec::new();
    let mut filled = 0;
    while filled < size {
        if filled == data.len() {
            let grow = data.len().max(FIRST_READ_BYTES).min(size - data.len());
            data.reserve_exact(grow);
            data.resize(data.len() + grow, 0);
        }
        match io.read(&mut data[filled..]).await? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    FrameTruncated { size, read: filled },
                ));
            }
            n => filled += n,
        }
    }
    Ok(data)
}

async fn write_frame<T>(io: &mut T, data: Vec<u8>, max: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let size = data.len();
    let header = match u32::try_from(size) {
        Ok(len) if size <= max => len.to_be_bytes(),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                FrameTooLarge { size, max },
            ));
        }
    };
    if size <= COALESCE_BYTES {
        let mut frame = Vec::with_capacity(4 + size);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&data);
        io.write_all(&frame).await?;
    } else {
        io.write_all(&header).await?;
        io.write_all(&data).await?;
    }
    io.flush().await
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        data: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, data, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        data: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, data, self.max_response).await
    }
}

/// The [`FrameTooLarge`] inside an I/O error from the codec, if that is
/// what it is.
pub(crate) fn frame_too_large(error: &io::Error) -> Option<FrameTooLarge> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<FrameTooLarge>())
        .copied()
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    use super::*;

    #[test]
    fn frames_round_trip() {
        for size in [0, 1, COALESCE_BYTES, COALESCE_BYTES + 1, MAX_REQUEST_BYTES] {
            let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut wire = Cursor::new(Vec::new());
            block_on(Codec::of(Channel::Message).write_request(
                &MESSAGE_PROTOCOL,
                &mut wire,
                data.clone(),
            ))
            .unwrap();
            assert_eq!(wire.get_ref().len(), 4 + size);
            wire.set_position(0);
            let read =
                block_on(Codec::of(Channel::Message).read_request(&MESSAGE_PROTOCOL, &mut wire))
                    .unwrap();
            assert_eq!(read, data);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        // A header claiming 4 GiB and no body: refused from the header
        // alone (an attempt to read the body would fail with end of file).
        let mut wire = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let error =
            block_on(Codec::of(Channel::Message).read_request(&MESSAGE_PROTOCOL, &mut wire))
                .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            frame_too_large(&error),
            Some(FrameTooLarge {
                size: u32::MAX as usize,
                max: MAX_REQUEST_BYTES
            })
        );

        let header = u32::try_from(MAX_RESPONSE_BYTES + 1).unwrap().to_be_bytes();
        let mut wire = Cursor::new(header.to_vec());
        let error =
            block_on(Codec::of(Channel::Message).read_response(&MESSAGE_PROTOCOL, &mut wire))
                .unwrap_err();
        assert_eq!(
            frame_too_large(&error).map(|e| e.max),
            Some(MAX_RESPONSE_BYTES)
        );
    }

    /// Serves `bytes` at most `chunk` at a time, then stalls (or ends, if
    /// `end`), and remembers the largest buffer it was asked to fill.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        chunk: usize,
        end: bool,
        largest_ask: usize,
    }

    impl Trickle {
        fn new(bytes: Vec<u8>, chunk: usize, end: bool) -> Self {
            Self {
                bytes,
                at: 0,
                chunk,
                end,
                largest_ask: 0,
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.largest_ask = self.largest_ask.max(buf.len());
            let left = self.bytes.len() - self.at;
            if left == 0 && !self.end {
                return std::task::Poll::Pending;
            }
            let n = left.min(buf.len()).min(self.chunk);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    fn frame(size: usize) -> Vec<u8> {
        let mut wire = u32::try_from(size).unwrap().to_be_bytes().to_vec();
        wire.extend((0..size).map(|i| (i % 251) as u8));
        wire
    }

    #[test]
    fn frames_arriving_in_pieces_are_read_whole() {
        for size in [0, 1, 1023, 1024, 1025, 3000, 100_000, MAX_REQUEST_BYTES] {
            for chunk in [1, 7, 4096] {
                if size > 3000 && chunk < 4096 {
                    continue;
                }
                let wire = frame(size);
                let mut io = Trickle::new(wire.clone(), chunk, false);
                let read = block_on(read_frame(&mut io, MAX_REQUEST_BYTES)).unwrap();
                assert_eq!(read, wire[4..], "size {size} in pieces of {chunk}");
                assert!(
                    io.largest_ask <= size.max(4),
                    "asked for {}",
                    io.largest_ask
                );
            }
        }
    }

    #[test]
    fn a_stalled_frame_holds_a_buffer_for_what_arrived_not_what_was_announced() {
        // A length of 1 MiB, 10 bytes of body, then nothing: the reader
        // waits with a 1 KiB buffer (it used to allocate the full 1 MiB
        // from the header alone).
        let mut wire = frame(MAX_REQUEST_BYTES);
        wire.truncate(4 + 10);
        let mut io = Trickle::new(wire, 4096, false);
        let read = futures::FutureExt::now_or_never(read_frame(&mut io, MAX_REQUEST_BYTES));
        assert!(read.is_none(), "still waiting for the rest");
        assert_eq!(io.at, 14, "read everything that arrived");
        assert_eq!(io.largest_ask, FIRST_READ_BYTES);

        // 100 KiB arrive: the buffer has grown to 128 KiB, not 1 MiB.
        let mut wire = frame(MAX_REQUEST_BYTES);
        wire.truncate(4 + 100 * 1024);
        let mut io = Trickle::new(wire, 4096, false);
        let read = futures::FutureExt::now_or_never(read_frame(&mut io, MAX_REQUEST_BYTES));
        assert!(read.is_none());
        assert_eq!(io.at, 4 + 100 * 1024);
        assert!(io.largest_ask <= 64 * 1024, "asked for {}", io.largest_ask);
    }

    #[test]
    fn a_truncated_frame_is_an_unexpected_end_of_file() {
        for (size, sent) in [(10, 0), (10, 9), (5000, 4999), (MAX_REQUEST_BYTES, 1)] {
            let mut wire = frame(size);
            wire.truncate(4 + sent);
            let mut io = Trickle::new(wire, 4096, true);
            let error =
                block_on(Codec::of(Channel::Message).read_request(&MESSAGE_PROTOCOL, &mut io))
                    .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{size}/{sent}");
            assert_eq!(
                error
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<FrameTruncated>()),
                Some(&FrameTruncated { size, read: sent })
            );
        }
        // A header cut short is one too.
        let mut io = Trickle::new(vec![0, 0], 4096, true);
        let error = block_on(read_frame(&mut io, MAX_REQUEST_BYTES)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_writer_refuses_oversized_frames() {
        let mut wire = Cursor::new(Vec::new());
        let error = block_on(Codec::of(Channel::Message).write_response(
            &MESSAGE_PROTOCOL,
            &mut wire,
            vec![0; MAX_RESPONSE_BYTES + 1],
        ))
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(wire.get_ref().is_empty(), "nothing was written");
    }
}
