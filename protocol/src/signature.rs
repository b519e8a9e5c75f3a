//! Workload signatures: OpenSSH SSHSIG over a module's bytes, namespace `lull-workload`, and
//! trust lists in OpenSSH's `allowed_signers` format.
//!
//! Because the format is OpenSSH's own, `ssh-keygen -Y sign -n lull-workload` and `lull sign`
//! make interchangeable signatures, and an owner can keep the trust list with the same tools.
//!
//! What [`TrustList::verify`] checks, in the order `ssh-keygen -Y verify` does:
//!
//! 1. the text is an SSHSIG for namespace `lull-workload`;
//! 2. the key that made it is not revoked ([`TrustList::parse_revoked`]: a file of public keys,
//!    as `ssh-keygen -Y verify -r` takes);
//! 3. some line of the trust list holds that key, allows the namespace (`namespaces="..."`) and
//!    is in force now (`valid-after="..."`, `valid-before="..."`: `YYYYMMDD[HHMM[SS]]`, in the
//!    machine's time zone unless followed by `Z` for UTC, as OpenSSH reads them);
//! 4. the signature matches exactly these bytes.
//!
//! Certificate authorities (`cert-authority`) are refused when the list is read: a trust list
//! names keys, not issuers.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace of workload signatures.
pub const NAMESPACE: &str = "lull-workload";

/// Why a signature was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The module carries no signature.
    #[error("the module is not signed (sign it with `lull sign FILE`)")]
    Unsigned,
    /// The signature text is not an SSHSIG.
    #[error("the signature is not an SSH signature: {0}")]
    Malformed(String),
    /// The signature is for another namespace.
    #[error("the signature is for namespace {found:?}, not {NAMESPACE:?}")]
    Namespace {
        /// The namespace found.
        found: String,
    },
    /// The key that signed is not on the trust list.
    #[error("signed by {fingerprint}, which is not on the trust list")]
    UnknownSigner {
        /// The signing key's fingerprint.
        fingerprint: String,
    },
    /// The key is trusted only for other namespaces.
    #[error("the trust list allows {principal} only for namespaces {namespaces}")]
    NamespaceNotAllowed {
        /// The principal.
        principal: String,
        /// What the list allows.
        namespaces: String,
    },
    /// The key's lines allow it only outside the current time.
    #[error("the trust list allows {principal} only {window}")]
    OutsideValidity {
        /// The principal.
        principal: String,
        /// The window, in words (e.g. "from 2027-01-01 00:00:00 UTC").
        window: String,
    },
    /// The key that signed has been revoked.
    #[error("signed by {fingerprint}, which is revoked")]
    Revoked {
        /// The signing key's fingerprint.
        fingerprint: String,
    },
    /// The signature does not match these bytes.
    #[error("bad signature: it does not match the module's bytes")]
    BadSignature,
}

/// Signs `bytes` as a workload with `key`, returning the armored signature (`FILE.sig` content).
pub fn sign(key: &PrivateKey, bytes: &[u8]) -> Result<String, ssh_key::Error> {
    key.sign(NAMESPACE, HashAlg::Sha512, bytes)?
        .to_pem(LineEnding::LF)
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// Principals (comma-separated in the file).
    pub principals: Vec<String>,
    /// `namespaces="..."`, when given.
    pub namespaces: Option<Vec<String>>,
    /// `valid-after="..."`, when given: the key is trusted from then on.
    pub valid_after: Option<SystemTime>,
    /// `valid-before="..."`, when given: the key is trusted until then.
    pub valid_before: Option<SystemTime>,
    /// The key.
    pub key: PublicKey,
}

impl AllowedSigner {
    /// Whether the line is in force at `now`.
    fn valid_at(&self, now: SystemTime) -> bool {
        self.valid_after.is_none_or(|t| now >= t) && self.valid_before.is_none_or(|t| now < t)
    }

    /// The line's validity window in words, e.g. "from 2027-01-01 00:00:00 UTC".
    fn window(&self) -> String {
        match (self.valid_after, self.valid_before) {
            (Some(a), Some(b)) => format!("from {} until {}", utc_text(a), utc_text(b)),
            (Some(a), None) => format!("from {}", utc_text(a)),
            (None, Some(b)) => format!("until {}", utc_text(b)),
            (None, None) => "always".to_owned(),
        }
    }
}

/// A trust list: who may sign the workloads a machine runs, and which keys are revoked.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    signers: Vec<AllowedSigner>,
    revoked: Vec<PublicKey>,
}

/// Why a trust list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct TrustListError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a trust list or a revocation file could not be read from disk.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    /// The file could not be read. (The cause is in the message, not a `source`, so that error
    /// chains do not say it twice.)
    #[error("reading {what} {}: {cause}", path.display())]
    Io {
        /// "the trust list" or "the revoked keys".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A line of it is wrong.
    #[error("reading {what} {}: {cause}", path.display())]
    Parse {
        /// "the trust list" or "the revoked keys".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Which line and why.
        cause: TrustListError,
    },
}

impl TrustList {
    /// Reads an `allowed_signers` file and, when given, a file of revoked keys
    /// ([`parse_revoked`](TrustList::parse_revoked)).
    pub fn read_files(allowed: &Path, revoked: Option<&Path>) -> Result<Self, TrustFileError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|cause| TrustFileError::Io {
                what,
                path: path.to_owned(),
                cause,
            })
        };
        let allowed_what = "the trust list";
        let mut list =
            Self::parse(&read(allowed_what, allowed)?).map_err(|cause| TrustFileError::Parse {
                what: allowed_what,
                path: allowed.to_owned(),
                cause,
            })?;
        if let Some(path) = revoked {
            let what = "the revoked keys";
            list.parse_revoked(&read(what, path)?)
                .map_err(|cause| TrustFileError::Parse {
                    what,
                    path: path.to_owned(),
                    cause,
                })?;
        }
        Ok(list)
    }

    /// An empty list, which trusts nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one key under one principal.
    pub fn add(&mut self, principal: &str, key: PublicKey) {
        self.signers.push(AllowedSigner {
            principals: vec![principal.to_owned()],
            namespaces: None,
            valid_after: None,
            valid_before: None,
            key,
        });
    }

    /// Reads a revocation file — public keys in OpenSSH format, one per line (`#` comments and
    /// blank lines ignored), as `ssh-keygen -Y verify -r` takes — and refuses their signatures
    /// from now on, whatever the trust list says.
    pub fn parse_revoked(&mut self, text: &str) -> Result<(), TrustListError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line).map_err(|e| TrustListError {
                line: i + 1,
                reason: format!("cannot read key: {e}"),
            })?;
            self.revoked.push(key);
        }
        Ok(())
    }

    /// How many keys are revoked.
    pub fn revoked_len(&self) -> usize {
        self.revoked.len()
    }

    /// How many keys the list holds.
    pub fn len(&self) -> usize {
        self.signers.len()
    }

    /// Whether the list trusts nobody.
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Parses an OpenSSH `allowed_signers` file.
    pub fn parse(text: &str) -> Result<Self, TrustListError> {
        let mut list = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| TrustListError {
                line: i + 1,
                reason,
            };
            let tokens = split_tokens(line);
            if tokens.len() < 3 {
                return Err(err(
                    "expected: principals [options] key-type base64-key".into()
                ));
            }
            let principals: Vec<String> = tokens[0]
                .trim_matches('"')
                .split(',')
                .map(str::to_owned)
                .collect();
            let (options, key_at) = if is_key_type(&tokens[1]) {
                (None, 1)
            } else {
                (Some(tokens[1].as_str()), 2)
            };
            if tokens.len() < key_at + 2 {
                return Err(err("missing key after options".into()));
            }
            let key_text = format!("{} {}", tokens[key_at], tokens[key_at + 1]);
            let key = PublicKey::from_openssh(&key_text)
                .map_err(|e| err(format!("cannot read key: {e}")))?;
            let mut namespaces = None;
            let (mut valid_after, mut valid_before) = (None, None);
            if let Some(opts) = options {
                for opt in split_options(opts) {
                    let (name, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
                    let value = value.trim_matches('"');
                    match name.to_ascii_lowercase().as_str() {
                        "namespaces" => {
                            namespaces = Some(value.split(',').map(str::to_owned).collect());
                        }
                        "valid-after" => {
                            valid_after = Some(
                                parse_time(value)
                                    .map_err(|e| err(format!("valid-after={value:?}: {e}")))?,
                            );
                        }
                        "valid-before" => {
                            valid_before = Some(
                                parse_time(value)
                                    .map_err(|e| err(format!("valid-before={value:?}: {e}")))?,
                            );
                        }
                        "cert-authority" => {
                            return Err(err("cert-authority keys are not supported".into()));
                        }
                        other => {
                            return Err(err(format!(
                                "unknown option {other:?} (known: namespaces, valid-after, valid-before)"
                            )));
                        }
                    }
                }
            }
            list.signers.push(AllowedSigner {
                principals,
                namespaces,
                valid_after,
                valid_before,
                key,
            });
        }
        Ok(list)
    }

    /// Checks an armored signature over `bytes` now (see the module docs); returns the signer's
    /// first principal.
    pub fn verify(&self, bytes: &[u8], signature: Option<&str>) -> Result<String, SignatureError> {
        self.verify_at(bytes, signature, SystemTime::now())
    }

    /// [`verify`](TrustList::verify) as of `now`.
    pub fn verify_at(
        &self,
        bytes: &[u8],
        signature: Option<&str>,
        now: SystemTime,
    ) -> Result<String, SignatureError> {
        let text = signature.ok_or(SignatureError::Unsigned)?;
        let sig = SshSig::from_pem(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        if sig.namespace() != NAMESPACE {
            return Err(SignatureError::Namespace {
                found: sig.namespace().to_owned(),
            });
        }
        let fingerprint = || {
            PublicKey::from(sig.public_key().clone())
                .fingerprint(HashAlg::Sha256)
                .to_string()
        };
        if self
            .revoked
            .iter()
            .any(|k| k.key_data() == sig.public_key())
        {
            return Err(SignatureError::Revoked {
                fingerprint: fingerprint(),
            });
        }
        let lines: Vec<&AllowedSigner> = self
            .signers
            .iter()
            .filter(|s| s.key.key_data() == sig.public_key())
            .collect();
        let Some(first) = lines.first() else {
            return Err(SignatureError::UnknownSigner {
                fingerprint: fingerprint(),
            });
        };
        let for_namespace = |s: &&&AllowedSigner| {
            s.namespaces
                .as_ref()
                .is_none_or(|ns| ns.iter().any(|n| n == NAMESPACE))
        };
        let Some(in_namespace) = lines.iter().find(for_namespace) else {
            return Err(SignatureError::NamespaceNotAllowed {
                principal: first.principals.join(","),
                namespaces: first.namespaces.as_deref().unwrap_or_default().join(","),
            });
        };
        let signer = lines
            .iter()
            .filter(for_namespace)
            .find(|s| s.valid_at(now))
            .ok_or_else(|| SignatureError::OutsideValidity {
                principal: in_namespace.principals.join(","),
                window: in_namespace.window(),
            })?;
        signer
            .key
            .verify(NAMESPACE, bytes, &sig)
            .map_err(|_| SignatureError::BadSignature)?;
        Ok(signer.principals.first().cloned().unwrap_or_default())
    }
}

/// Reads an OpenSSH `allowed_signers` time, `YYYYMMDD[HHMM[SS]][Z]`: UTC with `Z`, else the
/// machine's local time.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (text, false),
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally with Z".into());
    }
    let num =
        |range: std::ops::Range<usize>| digits.get(range).map_or(0, |d| d.parse().unwrap_or(0));
    let (year, month, day): (i64, i64, i64) = (num(0..4), num(4..6), num(6..8));
    let (hour, minute, second): (i64, i64, i64) = (num(8..10), num(10..12), num(12..14));
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err(format!("no month {month}")),
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return Err("not a valid date and time".into());
    }
    let mut secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    if !utc {
        secs -= local_offset(secs);
    }
    let secs = u64::try_from(secs).map_err(|_| "before 1970".to_owned())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `t` as "2027-01-01 00:00:00 UTC".
fn utc_text(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The machine's offset from UTC, in seconds, around the local time that reads as `local_secs`
/// (seconds since 1970 as if it were UTC). Zero where it cannot be known.
#[cfg(unix)]
fn local_offset(local_secs: i64) -> i64 {
    // (On 32-bit systems far dates saturate; the offset there is the zone's current one.) The
    // libc crate marks musl's `time_t` deprecated because it will widen: what localtime_r takes.
    #[allow(deprecated)]
    let t = libc::time_t::try_from(local_secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: an all-zero `tm` is a valid value; `localtime_r` writes only into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return 0;
    }
    // `c_long` is `i32` on 32-bit systems.
    #[allow(clippy::useless_conversion)]
    i64::from(tm.tm_gmtoff)
}

#[cfg(not(unix))]
fn local_offset(_local_secs: i64) -> i64 {
    0
}

fn is_key_type(token: &str) -> bool {
    token.starts_with("ssh-") || token.starts_with("ecdsa-") || token.starts_with("sk-")
}

/// Splits on whitespace, keeping double-quoted runs together.
fn split_tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits an options field on commas outside quotes.
fn split_options(opts: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in opts.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::Algorithm;
    use ssh_key::rand_core::OsRng;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
    }

    #[test]
    fn signed_by_a_trusted_key_verifies() {
        let k = key();
        let sig = sign(&k, b"module bytes").unwrap();
        let line = format!("dev@lull {}", k.public_key().to_openssh().unwrap());
        let list = TrustList::parse(&line).unwrap();
        assert_eq!(
            list.verify(b"module bytes", Some(&sig)).unwrap(),
            "dev@lull"
        );
        assert_eq!(
            list.verify(b"other bytes", Some(&sig)),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            list.verify(b"module bytes", None),
            Err(SignatureError::Unsigned)
        );
    }

    #[test]
    fn unknown_signer_is_refused() {
        let sig = sign(&key(), b"m").unwrap();
        let mut list = TrustList::new();
        list.add("someone", key().public_key().clone());
        assert!(matches!(
            list.verify(b"m", Some(&sig)),
            Err(SignatureError::UnknownSigner { .. })
        ));
    }

    #[test]
    fn namespaces_option_is_honoured() {
        let k = key();
        let sig = sign(&k, b"m").unwrap();
        let line = format!(
            "a@b namespaces=\"git,file\" {}",
            k.public_key().to_openssh().unwrap()
        );
        let list = TrustList::parse(&line).unwrap();
        assert!(matches!(
            list.verify(b"m", Some(&sig)),
            Err(SignatureError::NamespaceNotAllowed { .. })
        ));
    }

    fn at(text: &str) -> SystemTime {
        parse_time(text).unwrap()
    }

    #[test]
    fn times_read_as_openssh_reads_them() {
        assert_eq!(at("19700101Z"), UNIX_EPOCH);
        assert_eq!(
            at("20270101Z"),
            UNIX_EPOCH + Duration::from_secs(1_798_761_600)
        );
        assert_eq!(
            at("202701010930Z"),
            at("20270101Z") + Duration::from_secs(9 * 3600 + 30 * 60)
        );
        assert_eq!(
            at("20240229235959Z"),
            UNIX_EPOCH + Duration::from_secs(1_709_251_199)
        );
        assert_eq!(utc_text(at("20240229235959Z")), "2024-02-29 23:59:59 UTC");
        for bad in [
            "2027",
            "20270230Z",
            "20271301",
            "2027010125",
            "yyyymmdd",
            "202701011260Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validity_windows_are_honoured() {
        let k = key();
        let sig = sign(&k, b"m").unwrap();
        let public = k.public_key().to_openssh().unwrap();
        let list = TrustList::parse(&format!(
            "a@b valid-after=\"20270101Z\",valid-before=\"20280101Z\" {public}"
        ))
        .unwrap();
        assert_eq!(
            list.verify_at(b"m", Some(&sig), at("20270615Z")).unwrap(),
            "a@b"
        );
        for outside in ["20261231235959Z", "20280101Z", "20300101Z"] {
            assert_eq!(
                list.verify_at(b"m", Some(&sig), at(outside)),
                Err(SignatureError::OutsideValidity {
                    principal: "a@b".into(),
                    window: "from 2027-01-01 00:00:00 UTC until 2028-01-01 00:00:00 UTC".into(),
                }),
                "{outside}"
            );
        }
        // Another line for the same key that is in force wins.
        let list = TrustList::parse(&format!(
            "old valid-before=\"20200101Z\" {public}\nnew valid-after=\"20200101Z\" {public}"
        ))
        .unwrap();
        assert_eq!(
            list.verify_at(b"m", Some(&sig), at("20270615Z")).unwrap(),
            "new"
        );
    }

    #[test]
    fn revoked_keys_are_refused_whatever_the_list_says() {
        let k = key();
        let sig = sign(&k, b"m").unwrap();
        let public = k.public_key().to_openssh().unwrap();
        let mut list = TrustList::parse(&format!("a@b {public}")).unwrap();
        list.parse_revoked(&format!(
            "# gone\n{}\n",
            key().public_key().to_openssh().unwrap()
        ))
        .unwrap();
        assert_eq!(list.verify(b"m", Some(&sig)).unwrap(), "a@b");
        list.parse_revoked(&public).unwrap();
        assert_eq!(list.revoked_len(), 2);
        assert!(matches!(
            list.verify(b"m", Some(&sig)),
            Err(SignatureError::Revoked { .. })
        ));
        assert_eq!(list.parse_revoked("\nnot a key\n").unwrap_err().line, 2);
    }

    #[test]
    fn unknown_options_and_bad_times_are_errors() {
        let public = key().public_key().to_openssh().unwrap();
        let err = TrustList::parse(&format!("a@b valid-after=\"someday\" {public}")).unwrap_err();
        assert!(err.reason.contains("valid-after"), "{err}");
        let err = TrustList::parse(&format!("a@b no-touch-required {public}")).unwrap_err();
        assert!(err.reason.contains("unknown option"), "{err}");
    }

    #[test]
    fn garbage_lines_name_their_line() {
        let err = TrustList::parse("# comment\n\nbob ssh-ed25519 notbase64!!\n").unwrap_err();
        assert_eq!(err.line, 3);
    }
}
