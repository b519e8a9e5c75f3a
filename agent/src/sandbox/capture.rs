//! [`Capture`]: the guest's stdout or stderr. It keeps the first `cap` bytes, drops the rest
//! without telling the guest (which sees every write succeed) and records that it dropped some.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use lull_protocol::sync::lock;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The most bytes the guest may hand over in one write (`check-write`'s permit). This also bounds
/// host allocations such as `write-zeroes`.
const WRITE_PERMIT: usize = 64 * 1024;

/// A capped in-memory sink for one output stream. Clones share the buffer.
#[derive(Clone, Debug)]
pub(crate) struct Capture {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Debug, Default)]
struct Buffer {
    /// How many more bytes will be kept.
    room: usize,
    bytes: Vec<u8>,
    truncated: bool,
}

impl Buffer {
    fn append(&mut self, data: &[u8]) {
        let kept = data.len().min(self.room);
        self.bytes.extend_from_slice(&data[..kept]);
        self.room -= kept;
        if kept < data.len() {
            self.truncated = true;
        }
    }
}

impl Capture {
    /// A sink that keeps at most `cap` bytes.
    pub(crate) fn new(cap: u64) -> Self {
        let room = usize::try_from(cap).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(Mutex::new(Buffer {
                room,
                ..Buffer::default()
            })),
        }
    }

    /// Takes the bytes kept so far, and whether any were dropped so far. Bytes taken still count
    /// against the cap.
    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let mut buffer = self.lock();
        (std::mem::take(&mut buffer.bytes), buffer.truncated)
    }

    /// Up to `max` of the bytes kept so far from `offset` on, how many are kept, and whether
    /// any were dropped: what a running guest wrote, for someone following it.
    pub(crate) fn read(&self, offset: u64, max: usize) -> lull_protocol::message::LiveOutput {
        let buffer = self.lock();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(buffer.bytes.len());
        let end = start.saturating_add(max).min(buffer.bytes.len());
        lull_protocol::message::LiveOutput {
            bytes: buffer.bytes[start..end].to_vec(),
            kept: buffer.bytes.len() as u64,
            truncated: buffer.truncated,
        }
    }

    /// Keeps as much of `data` as the cap leaves room for.
    pub(crate) fn append(&self, data: &[u8]) {
        self.lock().append(data);
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // `append` cannot panic half-way, so a poisoned buffer is still consistent.
        lock(&self.inner)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_cap_bytes_and_accepts_the_rest() {
        let mut capture = Capture::new(5);
        capture.write(Bytes::from_static(b"hel")).unwrap();
        let live = capture.read(1, 1);
        assert_eq!(
            (live.bytes, live.kept, live.truncated),
            (b"e".to_vec(), 3, false)
        );
        assert!(
            capture.read(7, 10).bytes.is_empty(),
            "past the end: nothing"
        );
        assert_eq!(capture.take(), (b"hel".to_vec(), false));
        capture.write(Bytes::from_static(b"lo, world")).unwrap();
        capture.write(Bytes::from_static(b"more")).unwrap();
        assert_eq!(capture.check_write().unwrap(), WRITE_PERMIT);
        assert_eq!(capture.take(), (b"lo".to_vec(), true));
    }
}
