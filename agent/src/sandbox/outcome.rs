//! How a finished guest becomes an [`Outcome`]: the pure part of [`Sandbox::run`], kept apart
//! from wasmtime's calls so that the rules are in one place.
//!
//! [`Sandbox::run`]: super::Sandbox::run

use std::time::Duration;

use lull_protocol::message::Outcome;
use wasmtime::WasmBacktrace;
use wasmtime_wasi::I32Exit;

use super::control::Stop;

/// What a run knew when the guest stopped, besides how it stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    /// The guest's memory cap, in bytes.
    pub(crate) memory_limit: u64,
    /// Whether the limiter refused the guest memory at some point.
    pub(crate) memory_denied: bool,
    /// The guest's wall-time limit.
    pub(crate) timeout: Duration,
}

impl Facts {
    /// The guest ended with exit code `code` (`proc_exit`, `wasi:cli/exit`, returning from
    /// `_start`, or the result of `wasi:cli/run`). A failure after the sandbox refused memory is
    /// reported as running out of memory: that is what a Rust guest's allocation failure looks
    /// like from outside.
    pub(crate) fn exited(&self, code: i32) -> Outcome {
        if code != 0 && self.memory_denied {
            self.memory_exceeded()
        } else {
            Outcome::Exited { code }
        }
    }

    /// The guest's call (or instantiation) ended with `error`.
    pub(crate) fn failed(&self, error: &wasmtime::Error) -> Outcome {
        if let Some(stop) = error.downcast_ref::<Stop>() {
            return match stop {
                Stop::TimedOut => self.timed_out(),
                Stop::Cancelled(reason) => Outcome::Cancelled {
                    reason: reason.clone(),
                },
                Stop::Evicted(reason) => Outcome::Evicted {
                    reason: reason.clone(),
                },
                Stop::Left(reason) => Outcome::Left {
                    reason: reason.clone(),
                },
                Stop::DiskExceeded(reason) => Outcome::DiskExceeded {
                    reason: reason.clone(),
                },
            };
        }
        if let Some(I32Exit(code)) = error.downcast_ref::<I32Exit>() {
            return self.exited(*code);
        }
        if self.memory_denied {
            return self.memory_exceeded();
        }
        Outcome::Trapped {
            message: describe(error),
        }
    }

    /// The wall-time limit passed.
    pub(crate) fn timed_out(&self) -> Outcome {
        Outcome::TimedOut {
            limit_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn memory_exceeded(&self) -> Outcome {
        Outcome::MemoryExceeded {
            limit: self.memory_limit,
        }
    }
}

/// One line describing a guest failure: the root cause (for a trap, wasmtime's description such
/// as "wasm `unreachable` instruction executed"), then the first line of each context around it
/// (such as a memory fault's address), then the innermost wasm frame when wasmtime captured a
/// backtrace.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    let mut lines: Vec<String> = error
        .chain()
        .map(|cause| first_line(&cause.to_string()))
        .filter(|line| !line.is_empty() && !line.starts_with(BACKTRACE_HEADER))
        .collect();
    let root = lines.pop().unwrap_or_else(|| "unknown error".to_string());
    let mut message = root.clone();
    for context in lines.iter().filter(|line| **line != root) {
        message.push_str(": ");
        message.push_str(context);
    }
    if let Some(frame) = error
        .downcast_ref::<WasmBacktrace>()
        .and_then(innermost_frame)
    {
        message.push_str(" (at ");
        message.push_str(&frame);
        message.push(')');
    }
    message
}

/// How wasmtime's backtrace display starts.
const BACKTRACE_HEADER: &str = "error while executing at wasm backtrace";

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

/// The innermost frame of a backtrace as wasmtime displays it (demangled), without its index.
fn innermost_frame(backtrace: &WasmBacktrace) -> Option<String> {
    let text = backtrace.to_string();
    let line = text.lines().nth(1)?.trim();
    let line = line.split_once(": ").map_or(line, |(_, rest)| rest);
    Some(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Trap;

    const FACTS: Facts = Facts {
        memory_limit: 1 << 20,
        memory_denied: false,
        timeout: Duration::from_millis(250),
    };

    #[test]
    fn exits_are_exits_unless_memory_was_refused() {
        assert_eq!(FACTS.exited(3), Outcome::Exited { code: 3 });
        let denied = Facts {
            memory_denied: true,
            ..FACTS
        };
        assert_eq!(denied.exited(0), Outcome::Exited { code: 0 });
        assert_eq!(
            denied.exited(101),
            Outcome::MemoryExceeded { limit: 1 << 20 }
        );
    }

    #[test]
    fn stops_win_over_everything() {
        let denied = Facts {
            memory_denied: true,
            ..FACTS
        };
        let timed_out = wasmtime::Error::new(Stop::TimedOut);
        assert_eq!(
            denied.failed(&timed_out),
            Outcome::TimedOut { limit_ms: 250 }
        );
        let cancelled = wasmtime::Error::new(Stop::Cancelled("user".into()));
        assert_eq!(
            denied.failed(&cancelled),
            Outcome::Cancelled {
                reason: "user".into()
            }
        );
        let evicted = wasmtime::Error::new(Stop::Evicted("owner".into()));
        assert_eq!(
            denied.failed(&evicted),
            Outcome::Evicted {
                reason: "owner".into()
            }
        );
    }

    #[test]
    fn traps_are_described() {
        let error = wasmtime::Error::new(Trap::UnreachableCodeReached).context("in the guest");
        assert_eq!(
            FACTS.failed(&error),
            Outcome::Trapped {
                message: "wasm trap: wasm `unreachable` instruction executed: in the guest".into()
            }
        );
    }
}
