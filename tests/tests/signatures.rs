//! Workload signatures through the real commands: `lull keys generate`, `lull sign` and
//! `lull verify`, against OpenSSH's own `ssh-keygen -Y sign` / `-Y verify` both ways, and every
//! reason a signature is refused. (`cargo xtask test` installs `openssh-client` when
//! `ssh-keygen` is missing.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lull_tests::binary;
use tempfile::TempDir;

/// What a command printed and how it exited.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(program: &Path, args: &[&str], dir: &Path, stdin: Option<&Path>) -> Ran {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.stdin(match stdin {
        Some(path) => Stdio::from(fs::File::open(dir.join(path)).expect("stdin file")),
        None => Stdio::null(),
    });
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A temporary directory with a module in it, and the tools.
struct Bench {
    dir: TempDir,
    lull: PathBuf,
    ssh_keygen: PathBuf,
}

impl Bench {
    fn new() -> Bench {
        let dir = TempDir::new().expect("temp dir");
        fs::write(dir.path().join("m.wasm"), b"\0asm\x01\0\0\0 pretend module").expect("module");
        let ssh_keygen = [
            "/usr/bin/ssh-keygen",
            "/bin/ssh-keygen",
            "/usr/local/bin/ssh-keygen",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("ssh-keygen is missing: `cargo xtask test` installs openssh-client");
        Bench {
            dir,
            lull: binary("lull"),
            ssh_keygen,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lull(&self, args: &[&str]) -> Ran {
        run(&self.lull, args, self.dir.path(), None)
    }

    fn ssh_keygen(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        run(
            &self.ssh_keygen,
            args,
            self.dir.path(),
            stdin.map(Path::new),
        )
    }

    /// A key pair made by `lull keys generate`: NAME and NAME.pub.
    fn lull_key(&self, name: &str) {
        let ran = self.lull(&["keys", "generate", "--out", name, "--comment", name]);
        assert_eq!(ran.code, Some(0), "{ran}");
    }

    /// A key pair made by `ssh-keygen`: NAME and NAME.pub.
    fn openssh_key(&self, name: &str) {
        let ran = self.ssh_keygen(
            &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", name],
            None,
        );
        assert_eq!(ran.code, Some(0), "{ran}");
    }

    /// An `allowed_signers` file: one line per (principal, options, key file).
    fn allowed(&self, file: &str, lines: &[(&str, &str, &str)]) {
        let text: String = lines
            .iter()
            .map(|(principal, options, key)| {
                let public = fs::read_to_string(self.path(&format!("{key}.pub"))).expect("pub");
                format!("{principal} {options} {}\n", public.trim())
            })
            .collect();
        fs::write(self.path(file), text).expect("allowed_signers");
    }

    fn lull_verify(&self, extra: &[&str]) -> Ran {
        let mut args = vec!["verify", "m.wasm", "--allowed-signers", "allowed"];
        args.extend_from_slice(extra);
        self.lull(&args)
    }

    fn openssh_verify(&self, principal: &str) -> Ran {
        self.ssh_keygen(
            &[
                "-Y",
                "verify",
                "-f",
                "allowed",
                "-I",
                principal,
                "-n",
                "lull-workload",
                "-s",
                "m.wasm.sig",
            ],
            Some("m.wasm"),
        )
    }

    /// `lull verify` refuses with a reason containing `why`, and exits 1.
    #[track_caller]
    fn assert_refused(&self, extra: &[&str], why: &str) {
        let ran = self.lull_verify(extra);
        assert_eq!(ran.code, Some(1), "{ran}");
        assert!(ran.stderr.contains("not verified"), "{ran}");
        assert!(ran.stderr.contains(why), "expected {why:?} in:\n{ran}");
    }
}

#[test]
fn lull_signs_and_both_lull_and_ssh_keygen_verify() {
    let b = Bench::new();
    b.lull_key("me");
    let ran = b.lull(&["sign", "m.wasm", "--key", "me"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    b.allowed("allowed", &[("me@example.org", "", "me")]);

    let ran = b.lull_verify(&[]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stdout.contains("good signature by me@example.org"),
        "{ran}"
    );

    let ran = b.openssh_verify("me@example.org");
    assert_eq!(
        ran.code,
        Some(0),
        "ssh-keygen refused lull's signature:\n{ran}"
    );
}

#[test]
fn ssh_keygen_signs_and_lull_verifies() {
    let b = Bench::new();
    b.openssh_key("theirs");
    let ran = b.ssh_keygen(
        &[
            "-Y",
            "sign",
            "-f",
            "theirs",
            "-n",
            "lull-workload",
            "m.wasm",
        ],
        None,
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    b.allowed("allowed", &[("ops@example.org", "", "theirs")]);
    let ran = b.lull_verify(&[]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stdout.contains("good signature by ops@example.org"),
        "{ran}"
    );

    // A key written by `lull keys generate` is an OpenSSH key: ssh-keygen signs with it too.
    b.lull_key("mine");
    fs::remove_file(b.path("m.wasm.sig")).expect("old signature");
    let ran = b.ssh_keygen(
        &["-Y", "sign", "-f", "mine", "-n", "lull-workload", "m.wasm"],
        None,
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    b.allowed("allowed", &[("me", "", "mine")]);
    let ran = b.lull_verify(&[]);
    assert_eq!(ran.code, Some(0), "{ran}");
}

#[test]
fn every_kind_of_bad_signature_is_refused_with_its_reason() {
    let b = Bench::new();
    b.lull_key("me");
    b.lull_key("stranger");
    b.allowed("allowed", &[("me", "", "me")]);

    // Not signed at all.
    b.assert_refused(&[], "not signed");

    // Signed, then the module changed.
    assert_eq!(b.lull(&["sign", "m.wasm", "--key", "me"]).code, Some(0));
    let good_sig = fs::read_to_string(b.path("m.wasm.sig")).expect("sig");
    let module = fs::read(b.path("m.wasm")).expect("module");
    let mut tampered = module.clone();
    tampered.push(b'!');
    fs::write(b.path("m.wasm"), &tampered).expect("tamper");
    b.assert_refused(&[], "bad signature");
    fs::write(b.path("m.wasm"), &module).expect("restore");
    assert_eq!(b.lull_verify(&[]).code, Some(0));

    // The signature changed: one character of its body flipped.
    let lines: Vec<&str> = good_sig.lines().collect();
    let mut body: Vec<char> = lines[2].chars().collect();
    let at = body.len() / 2;
    body[at] = if body[at] == 'A' { 'B' } else { 'A' };
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    edited[2] = body.into_iter().collect();
    fs::write(b.path("m.wasm.sig"), edited.join("\n") + "\n").expect("tamper sig");
    let ran = b.lull_verify(&[]);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stderr.contains("not verified"), "{ran}");

    // A signature made for another file.
    fs::write(b.path("other.wasm"), b"another module").expect("other");
    assert_eq!(b.lull(&["sign", "other.wasm", "--key", "me"]).code, Some(0));
    b.assert_refused(&["--signature", "other.wasm.sig"], "bad signature");

    // Signed for another namespace.
    fs::remove_file(b.path("m.wasm.sig")).expect("rm sig");
    let ran = b.ssh_keygen(&["-Y", "sign", "-f", "me", "-n", "file", "m.wasm"], None);
    assert_eq!(ran.code, Some(0), "{ran}");
    b.assert_refused(&[], "namespace \"file\"");

    // Signed by a key the list does not hold.
    fs::remove_file(b.path("m.wasm.sig")).expect("rm sig");
    assert_eq!(
        b.lull(&["sign", "m.wasm", "--key", "stranger"]).code,
        Some(0)
    );
    b.assert_refused(&[], "not on the trust list");

    // A listed key, trusted for other namespaces only.
    b.allowed("allowed", &[("stranger", "namespaces=\"git\"", "stranger")]);
    b.assert_refused(&[], "only for namespaces git");

    // A listed key outside its validity window: ssh-keygen refuses it too.
    b.allowed(
        "allowed",
        &[("stranger", "valid-before=\"20200101Z\"", "stranger")],
    );
    b.assert_refused(&[], "until 2020-01-01 00:00:00 UTC");
    assert_ne!(b.openssh_verify("stranger").code, Some(0));
    b.allowed(
        "allowed",
        &[("stranger", "valid-after=\"29990101Z\"", "stranger")],
    );
    b.assert_refused(&[], "from 2999-01-01 00:00:00 UTC");
    assert_ne!(b.openssh_verify("stranger").code, Some(0));
    b.allowed(
        "allowed",
        &[("stranger", "valid-after=\"20200101Z\"", "stranger")],
    );
    assert_eq!(b.lull_verify(&[]).code, Some(0));
    assert_eq!(b.openssh_verify("stranger").code, Some(0));

    // A revoked key, however the list trusts it.
    let public = fs::read_to_string(b.path("stranger.pub")).expect("pub");
    fs::write(b.path("revoked"), format!("# compromised\n{public}")).expect("revoked");
    b.assert_refused(&["--revoked-signers", "revoked"], "revoked");
    let ran = b.ssh_keygen(
        &[
            "-Y",
            "verify",
            "-f",
            "allowed",
            "-I",
            "stranger",
            "-n",
            "lull-workload",
            "-s",
            "m.wasm.sig",
            "-r",
            "revoked",
        ],
        Some("m.wasm"),
    );
    assert_ne!(
        ran.code,
        Some(0),
        "ssh-keygen accepted a revoked key:\n{ran}"
    );
}

#[test]
fn unreadable_trust_lists_are_errors_that_name_the_file_and_line() {
    let b = Bench::new();
    fs::write(b.path("allowed"), "# keys\nme ssh-ed25519 notbase64!!\n").expect("allowed");
    let ran = b.lull_verify(&[]);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stderr.contains("allowed"), "{ran}");
    assert!(ran.stderr.contains("line 2"), "{ran}");

    let ran = b.lull(&["verify", "m.wasm", "--allowed-signers", "missing"]);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stderr.contains("missing"), "{ran}");
}
