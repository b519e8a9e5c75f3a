//! A script of `lull:guest/host` calls, read from fuzz input: each call is an opcode byte
//! (taken modulo 10) followed by its operands, little-endian. A call cut short by the end of
//! the script is not made. The guest of `host_calls` plays the same script from its memory, so
//! both targets read it alike.
//!
//! | opcode | call | operands (after the opcode) |
//! |---|---|---|
//! | 0 | `progress(f)` | `f`: f64 (any bits: NaN, infinities, negatives) |
//! | 1 | `checkpoint(state)` | offset: u16, len: u16; `state` is `len` bytes from the script at `offset % script length` |
//! | 2 | `checkpoint(state)` | ptr: u32, len: u32; the guest hands over that pointer and length unchecked |
//! | 3 | `checkpoint(state)` | pages: u8, modulo 32; `state` is the first `pages` × 64 KiB of the guest's memory (up to 2 MiB, more than any cap here) |
//! | 4 | `checkpoint-and-leave(state)` | offset: u16, len: u16, as for 1 |
//! | 5 | `notice()` | |
//! | 6 | `wait-notice(ms)` | ms: u64; passed whole when `notice` finds an eviction, else `ms & 1` (no test waits) |
//! | 7 | `log(level, message)` | level: u8 (4 and above are no level), offset: u16, len: u16, as for 1 |
//! | 8 | `task-index()`, `attempt()` | |
//! | 9 | `restore()` | |

/// Bytes each opcode takes with its operands.
pub const SIZES: [usize; 10] = [9, 5, 9, 2, 5, 1, 9, 6, 1, 1];

/// One host call of a script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Call {
    /// `progress(f)`.
    Progress(f64),
    /// `checkpoint` of a slice of the script.
    Checkpoint {
        /// Where in the script the state starts (modulo its length).
        offset: u16,
        /// The state's length.
        len: u16,
    },
    /// `checkpoint` with a pointer and length the guest does not check.
    CheckpointRaw {
        /// The guest address.
        ptr: u32,
        /// The length.
        len: u32,
    },
    /// `checkpoint` of the first `pages` × 64 KiB of the guest's memory.
    CheckpointHuge {
        /// Wasm pages, 0 to 31.
        pages: u8,
    },
    /// `checkpoint-and-leave` of a slice of the script.
    Leave {
        /// As for [`Call::Checkpoint`].
        offset: u16,
        /// As for [`Call::Checkpoint`].
        len: u16,
    },
    /// `notice()`.
    Notice,
    /// `wait-notice(ms)` (`ms & 1` when there is no notice).
    WaitNotice(u64),
    /// `log(level, message)`, the message a slice of the script.
    Log {
        /// The level's discriminant: 0 debug, 1 info, 2 warn, 3 error, others invalid.
        level: u8,
        /// As for [`Call::Checkpoint`].
        offset: u16,
        /// As for [`Call::Checkpoint`].
        len: u16,
    },
    /// `task-index()` and `attempt()`.
    Ids,
    /// `restore()`.
    Restore,
}

/// Reads a script's calls.
pub fn parse(script: &[u8]) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pc = 0;
    while pc < script.len() {
        let op = usize::from(script[pc] % 10);
        let Some(operands) = script.get(pc + 1..pc + SIZES[op]) else {
            break;
        };
        pc += SIZES[op];
        let u16_at = |i: usize| u16::from_le_bytes([operands[i], operands[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(operands[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(operands[i..i + 8].try_into().unwrap());
        calls.push(match op {
            0 => Call::Progress(f64::from_bits(u64_at(0))),
            1 => Call::Checkpoint {
                offset: u16_at(0),
                len: u16_at(2),
            },
            2 => Call::CheckpointRaw {
                ptr: u32_at(0),
                len: u32_at(4),
            },
            3 => Call::CheckpointHuge {
                pages: operands[0] % 32,
            },
            4 => Call::Leave {
                offset: u16_at(0),
                len: u16_at(2),
            },
            5 => Call::Notice,
            6 => Call::WaitNotice(u64_at(0)),
            7 => Call::Log {
                level: operands[0],
                offset: u16_at(1),
                len: u16_at(3),
            },
            8 => Call::Ids,
            _ => Call::Restore,
        });
    }
    calls
}

/// What the host must make of a progress report: NaN is 0, the rest clamped to 0..=1.
pub fn clamped(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// `len` bytes of `script` from `offset % script.len()`, going round to its start (the direct
/// target's stand-in for the guest memory after the script).
pub fn slice(script: &[u8], offset: u16, len: u16) -> Vec<u8> {
    if script.is_empty() {
        return vec![0; usize::from(len)];
    }
    let len = usize::from(len);
    let start = usize::from(offset) % script.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&script[start..(start + len).min(script.len())]);
    while out.len() < len {
        let more = (len - out.len()).min(script.len());
        out.extend_from_slice(&script[..more]);
    }
    out
}
