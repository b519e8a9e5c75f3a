//! Fuzzes the framing of `lull_protocol::frame` on arbitrary bytes, with a small cap (0 to 255
//! bytes) or the default one (4 MiB).
//!
//! What must hold:
//!
//! - [`check`] and [`body_len`] agree with the length prefix: a prefix over the cap is
//!   `TooLarge` from the 4 header bytes alone, before any body byte has arrived; `Ok(None)` only
//!   while the body is incomplete; `Ok(Some(len))` only for a whole frame.
//! - [`decode`] allocates nothing while the frame is incomplete or over the cap, never grows the
//!   buffer, consumes nothing when it says "incomplete", and exactly one frame when it returns a
//!   message or `Malformed`. While it parses a body, no single allocation is larger than 32 times
//!   that body plus 4 KiB (so never one sized by an announced length).
//! - Any message that decodes encodes again to a frame that decodes to an equal message.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use lull_protocol::frame::{
    DEFAULT_MAX_FRAME, FrameError, HEADER_LEN, body_len, check, decode, to_bytes,
};
use lull_protocol::message::{AgentMessage, CoordinatorMessage};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The system allocator, counting allocations and the largest one while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result, how many allocations it made and the largest.
fn counted<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let r = f();
    COUNTING.store(false, Ordering::Relaxed);
    (
        r,
        ALLOCATIONS.load(Ordering::Relaxed),
        LARGEST.load(Ordering::Relaxed),
    )
}

/// The most a parse may allocate at once for a body of `len` bytes. The messages are internally
/// tagged enums, which serde parses by buffering the whole object as `Content` first: a JSON
/// value of 2 bytes (`0,`) takes a 32-byte `Content`, an object entry of 5 bytes (`"":0,`) a
/// 64-byte pair, and a growing buffer may double past that. So 32 bytes for each byte of body,
/// plus small fixed allocations, bound what a body costs; nothing may be sized by an announced
/// length or the cap.
fn allowance(len: usize) -> usize {
    32 * len + 4096
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let max = if selector & 0x80 == 0 {
        usize::from(selector & 0x7f) * 2
    } else {
        DEFAULT_MAX_FRAME
    };
    check_prefix(bytes, max);
    if selector & 0x40 == 0 {
        decode_all::<AgentMessage>(bytes, max);
    } else {
        decode_all::<CoordinatorMessage>(bytes, max);
    }
});

/// `check` and `body_len` against the length prefix, read here independently.
fn check_prefix(bytes: &[u8], max: usize) {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        assert!(matches!(check(bytes, max), Ok(None)), "short header");
        return;
    };
    let announced = u32::from_be_bytes(*header) as usize;
    let whole = check(bytes, max);
    let header_only = check(header, max);
    let from_header = body_len(*header, max);
    if announced > max {
        for result in [&whole, &header_only] {
            assert!(
                matches!(result, Err(FrameError::TooLarge { len, max: m }) if *len == announced as u64 && *m == max),
                "{announced} > {max} must be refused from the header alone: {result:?}"
            );
        }
        assert!(matches!(from_header, Err(FrameError::TooLarge { .. })));
    } else {
        assert_eq!(from_header.ok(), Some(announced));
        let complete = bytes.len() >= HEADER_LEN + announced;
        match whole {
            Ok(Some(len)) => assert!(complete && len == announced),
            Ok(None) => assert!(!complete),
            Err(e) => panic!("{announced} <= {max} refused: {e}"),
        }
        if announced > 0 {
            assert!(matches!(header_only, Ok(None)), "{header_only:?}");
        }
    }
}

/// Decodes frame after frame until the buffer is incomplete or broken.
fn decode_all<T>(bytes: &[u8], max: usize)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        let capacity = buf.capacity();
        let prefix = buf
            .first_chunk::<HEADER_LEN>()
            .map(|h| u32::from_be_bytes(*h) as usize);
        let (result, allocations, largest) = counted(|| decode::<T>(&mut buf, max));
        assert!(buf.capacity() <= capacity, "decode grew the buffer");
        match result {
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame was consumed");
                assert_eq!(allocations, 0, "allocated for an incomplete frame");
                return;
            }
            Err(FrameError::TooLarge { len, max: m }) => {
                assert_eq!((Some(len as usize), m), (prefix, max));
                assert!(len as usize > max);
                assert_eq!(buf.len(), before, "a refused frame was consumed");
                assert_eq!(allocations, 0, "allocated for a frame over the cap");
                return;
            }
            Err(FrameError::Malformed(_)) => {
                let len = prefix.expect("a malformed frame has a header");
                assert!(len <= max);
                assert_eq!(buf.len(), before - HEADER_LEN - len, "malformed frame");
                assert!(
                    largest <= allowance(len),
                    "{largest} bytes for a {len} byte body"
                );
            }
            Ok(Some(message)) => {
                let len = prefix.expect("a frame has a header");
                assert!(len <= max);
                assert_eq!(buf.len(), before - HEADER_LEN - len, "decoded frame");
                assert!(
                    largest <= allowance(len),
                    "{largest} bytes for a {len} byte body"
                );
                round_trip(&message);
            }
        }
    }
}

/// Encodes `message` (the encoding may be longer than the input: defaults are written out) and
/// decodes it again, in one piece and after a split at every point of the header.
fn round_trip<T>(message: &T)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let frame = to_bytes(message, DEFAULT_MAX_FRAME).expect("a decoded message encodes");
    let mut buf = BytesMut::new();
    for (i, b) in frame.iter().take(HEADER_LEN + 1).enumerate() {
        assert!(
            matches!(decode::<T>(&mut buf, DEFAULT_MAX_FRAME), Ok(None)),
            "a frame after {i} bytes"
        );
        buf.put_u8(*b);
    }
    buf.extend_from_slice(&frame[(HEADER_LEN + 1).min(frame.len())..]);
    let again = decode::<T>(&mut buf, DEFAULT_MAX_FRAME)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is whole");
    assert_eq!(
        &again, message,
        "the message changed through encode and decode"
    );
    assert!(buf.is_empty());
}
