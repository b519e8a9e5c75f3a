//! Length-prefixed framing with a size cap.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. [`decode`] returns
//! `Ok(None)` while the buffer holds less than a whole frame, and refuses a length prefix above
//! the cap *before* allocating or waiting for the body, so a peer cannot make the reader hold
//! gigabytes by announcing them.

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes taken by the length prefix.
pub const HEADER_LEN: usize = 4;
/// The default cap on a frame's body: large enough for any control message, small enough that a
/// hostile length prefix costs nothing.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the cap allows; the stream must be closed.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The cap in force.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Appends `msg` to `out` as one frame.
pub fn encode<T: Serialize>(msg: &T, max: usize, out: &mut BytesMut) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > max {
        return Err(FrameError::TooLarge {
            len: body.len() as u64,
            max,
        });
    }
    out.reserve(HEADER_LEN + body.len());
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    Ok(())
}

/// Encodes `msg` as a single frame in a fresh buffer.
pub fn to_bytes<T: Serialize>(msg: &T, max: usize) -> Result<bytes::Bytes, FrameError> {
    let mut out = BytesMut::new();
    encode(msg, max, &mut out)?;
    Ok(out.freeze())
}

/// Checks whether `buf` starts with a whole frame, without allocating.
///
/// Returns `Ok(Some(len))` with the body length when it does, `Ok(None)` when more bytes are
/// needed, and an error when the announced length is over `max`.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    Ok(Some(len))
}

/// Reads a frame header: the body length, or an error when it is over `max`. For readers that
/// take the header and then exactly the body from a stream (`read_exact`), so that raw bytes
/// following a frame on the same stream are left unread.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    Ok(len)
}

/// Parses a frame body read after [`body_len`].
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Takes one frame off the front of `buf` and parses it.
///
/// `Ok(None)`: not a whole frame yet (nothing consumed). `Err`: the stream is broken and should
/// be closed (on a malformed body the frame is consumed).
pub fn decode<T: DeserializeOwned>(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<T>, FrameError> {
    let Some(len) = check(buf, max)? else {
        return Ok(None);
    };
    buf.advance(HEADER_LEN);
    let body = buf.split_to(len);
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Frames on async streams (feature `tokio`): both ends read a header, check it against the
/// cap, then read exactly the body, so raw bytes that follow a frame stay unread.
#[cfg(feature = "tokio")]
pub mod stream {
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{DEFAULT_MAX_FRAME, FrameError, HEADER_LEN};

    /// How long a frame's body may take to arrive once its header has: a peer that announces a
    /// frame and then trickles it in is cut off.
    pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    /// Why a frame could not be read or written.
    #[derive(Debug, thiserror::Error)]
    pub enum StreamError {
        /// The stream failed.
        #[error("stream: {0}")]
        Io(#[from] std::io::Error),
        /// The frame was refused.
        #[error(transparent)]
        Frame(#[from] FrameError),
        /// The frame's body did not arrive in time.
        #[error("a frame of {len} bytes did not arrive within {}s of its header", .limit.as_secs())]
        Slow {
            /// The announced length.
            len: usize,
            /// The time allowed.
            limit: std::time::Duration,
        },
    }

    /// Reads one frame; `Ok(None)` when the stream ended before a frame began. The body must
    /// follow its header within [`BODY_TIMEOUT`].
    pub async fn read<T: DeserializeOwned>(
        recv: &mut (impl AsyncRead + Unpin),
    ) -> Result<Option<T>, StreamError> {
        read_within(recv, BODY_TIMEOUT).await
    }

    /// Reads one frame whose body must follow its header within `limit`. Memory grows with the
    /// bytes that really arrive, not with the length announced: a peer that announces 4 MiB
    /// and sends nothing holds nothing.
    pub async fn read_within<T: DeserializeOwned>(
        recv: &mut (impl AsyncRead + Unpin),
        limit: std::time::Duration,
    ) -> Result<Option<T>, StreamError> {
        let mut header = [0u8; HEADER_LEN];
        match recv.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = super::body_len(header, DEFAULT_MAX_FRAME)?;
        let mut body = Vec::with_capacity(len.min(64 * 1024));
        let mut body_reader = (&mut *recv).take(len as u64);
        match tokio::time::timeout(limit, body_reader.read_to_end(&mut body)).await {
            Err(_) => return Err(StreamError::Slow { len, limit }),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(n)) if n < len => {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            Ok(Ok(_)) => {}
        }
        Ok(Some(super::parse_body(&body)?))
    }

    /// Writes the frames of several messages with one write: a burst of small messages costs
    /// one write, not one each. A message that cannot be framed is left out and given to
    /// `dropped` with the reason; the others still go.
    pub async fn write_batch<T: Serialize>(
        send: &mut (impl AsyncWrite + Unpin),
        msgs: &[T],
        mut dropped: impl FnMut(&T, FrameError),
    ) -> Result<(), std::io::Error> {
        let mut buf = bytes::BytesMut::new();
        for msg in msgs {
            if let Err(e) = super::encode(msg, DEFAULT_MAX_FRAME, &mut buf) {
                dropped(msg, e);
            }
        }
        send.write_all(&buf).await
    }

    /// Writes one frame.
    pub async fn write<T: Serialize>(
        send: &mut (impl AsyncWrite + Unpin),
        msg: &T,
    ) -> Result<(), StreamError> {
        send.write_all(&super::to_bytes(msg, DEFAULT_MAX_FRAME)?)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AgentMessage, CoordinatorMessage};

    #[test]
    fn round_trip_in_pieces() {
        let msg = CoordinatorMessage::Refused {
            reason: "protocol version 9 is not spoken here".into(),
        };
        let bytes = to_bytes(&msg, DEFAULT_MAX_FRAME).unwrap();
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            let got: Option<CoordinatorMessage> = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap();
            assert!(got.is_none(), "a frame appeared after {i} bytes");
            buf.put_u8(*b);
        }
        let got: CoordinatorMessage = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(got, msg);
        assert!(buf.is_empty());
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = BytesMut::new();
        let a = AgentMessage::Heartbeat;
        encode(&a, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        encode(&a, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        let _: AgentMessage = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let _: AgentMessage = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert!(
            decode::<AgentMessage>(&mut buf, DEFAULT_MAX_FRAME)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn four_gib_length_prefix_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        let err = decode::<AgentMessage>(&mut buf, DEFAULT_MAX_FRAME).unwrap_err();
        match err {
            FrameError::TooLarge { len, max } => {
                assert_eq!(len, u32::MAX as u64);
                assert_eq!(max, DEFAULT_MAX_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Nothing was reserved for the announced body.
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(b"{{{");
        assert!(matches!(
            decode::<AgentMessage>(&mut buf, DEFAULT_MAX_FRAME),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder() {
        // A cheap stand-in for fuzzing: many random buffers, some with valid headers.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf = BytesMut::new();
            if next() % 2 == 0 {
                buf.put_u32((next() % 80) as u32);
            }
            for _ in 0..len {
                buf.put_u8(next() as u8);
            }
            while let Ok(Some(_)) = decode::<AgentMessage>(&mut buf, 64) {}
        }
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let msg = CoordinatorMessage::Refused {
            reason: "x".repeat(100),
        };
        assert!(matches!(
            to_bytes(&msg, 50),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn a_trickled_body_is_cut_off_and_holds_only_what_arrived() {
        use tokio::io::AsyncWriteExt;
        let (mut peer, mut mine) = tokio::io::duplex(1024);
        // Announces a frame of 4 MiB, then sends ten bytes and stops.
        peer.write_all(&(DEFAULT_MAX_FRAME as u32).to_be_bytes())
            .await
            .unwrap();
        peer.write_all(b"{\"type\":\"he").await.unwrap();
        let limit = std::time::Duration::from_millis(50);
        let err = stream::read_within::<AgentMessage>(&mut mine, limit)
            .await
            .unwrap_err();
        assert!(
            matches!(err, stream::StreamError::Slow { len, .. } if len == DEFAULT_MAX_FRAME),
            "{err}"
        );
        // A body cut short by the end of the stream is an error too, not a frame.
        let (mut peer, mut mine) = tokio::io::duplex(1024);
        peer.write_all(&100u32.to_be_bytes()).await.unwrap();
        peer.write_all(b"{}").await.unwrap();
        drop(peer);
        assert!(matches!(
            stream::read::<AgentMessage>(&mut mine).await,
            Err(stream::StreamError::Io(_))
        ));
        // A whole frame reads as before.
        let (mut peer, mut mine) = tokio::io::duplex(1024);
        stream::write(&mut peer, &AgentMessage::Heartbeat)
            .await
            .unwrap();
        assert_eq!(
            stream::read::<AgentMessage>(&mut mine).await.unwrap(),
            Some(AgentMessage::Heartbeat)
        );
    }
}
