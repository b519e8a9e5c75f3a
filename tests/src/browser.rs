//! A real browser for the dashboard's tests: Debian's `chromium`, headless, driven over the
//! Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`: commands go in on the
//! browser's file descriptor 3, answers and events come out on 4, each a JSON text ended by a
//! NUL byte). A pipe needs no port and cannot be reached by anything else on the machine.
//!
//! `cargo xtask test` installs `chromium` (Debian's package); without it these tests fail and
//! say how to install it.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser binary: `LULL_CHROMIUM`, else `chromium` on `PATH`.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("LULL_CHROMIUM") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chromium"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "the dashboard tests need a Chromium browser and found no `chromium` on PATH: \
                 run them with `cargo xtask test` (which installs Debian's `chromium`), install \
                 it with `apt-get install chromium`, or name a binary in LULL_CHROMIUM"
            )
        })
}

/// A headless browser with one page open.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's session on the browser's connection.
    session: String,
    /// The browser's profile, removed with it.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts the browser with a window of `width` x `height` CSS pixels and opens `url`.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        Browser::open_pinned(url, width, height, None)
    }

    /// [`Browser::open`], trusting the HTTPS server whose key hashes to `pin` (`sha256:HEX`, as
    /// the coordinator announces it) whatever its certificate: the browser's own pinning.
    pub fn open_pinned(url: &str, width: u32, height: u32, pin: Option<&str>) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("lull-chromium-")
            .tempdir()
            .expect("creating the browser's profile directory");
        let (commands_read, commands_write) = std::io::pipe().expect("making a pipe");
        let (messages_read, messages_write) = std::io::pipe().expect("making a pipe");
        let theirs: [OwnedFd; 2] = [commands_read.into(), messages_write.into()];
        let fds = [theirs[0].as_raw_fd(), theirs[1].as_raw_fd()];
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .args(pin.map(|pin| {
                let hex = pin.strip_prefix("sha256:").unwrap_or(pin);
                let bytes = hex::decode(hex).expect("a key hash is hex");
                use base64::Engine;
                format!(
                    "--ignore-certificate-errors-spki-list={}",
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                )
            }))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Out of the way first, in case a pipe already sits on 3 or 4; dup2 then
                // clears close-on-exec on the copies the browser keeps.
                let high = [
                    libc::fcntl(fds[0], libc::F_DUPFD_CLOEXEC, 10),
                    libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, 10),
                ];
                if high.contains(&-1)
                    || libc::dup2(high[0], 3) == -1
                    || libc::dup2(high[1], 4) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromium().display()));
        drop(theirs);

        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(messages_read);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands: commands_write,
            messages,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call(None, "Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().expect("a target ID").to_owned();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session ID")
            .to_owned();
        browser
    }

    /// Sends a command (to the page's session, or to the browser with `None`) and waits for
    /// its answer, skipping events.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&message).expect("encoding a command");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("sending {method} to the browser: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self.messages.recv_timeout(left).unwrap_or_else(|e| {
                panic!("the browser did not answer {method} within {COMMAND_TIMEOUT:?}: {e}")
            });
            if answer["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("the browser refused {method}: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value (awaited when it is
    /// a promise). A thrown exception fails the test with its description.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("evaluating `{expression}` in the page threw: {e}"))
    }

    fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let result = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception["exception"]["description"]
                .as_str()
                .map_or_else(|| exception.to_string(), str::to_owned)),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Polls `expression` until it is true, for at most `timeout`; fails saying `what`. An
    /// expression that throws (the page is still loading) counts as false.
    pub fn wait_until(&mut self, what: &str, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_eval(expression) {
                Ok(Value::Bool(true)) => return,
                Ok(v) => format!("it was {v}"),
                Err(e) => format!("it threw {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for the page to show {what} (`{expression}`; {last}); \
                 the page shows:\n{}",
                self.try_eval("document.body.innerText")
                    .unwrap_or_else(Value::String)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves what the page shows now as a PNG at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let session = self.session.clone();
        let shot = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("decoding the screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("making the screenshot's directory");
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("writing the screenshot to {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
