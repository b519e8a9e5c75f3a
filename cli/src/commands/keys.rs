//! `lull keys generate`, `lull sign` and `lull verify`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

/// Key commands.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Make an ed25519 signing key in OpenSSH format: PATH and PATH.pub.
    Generate {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// A comment stored with the key, e.g. your e-mail address.
        #[arg(long, default_value = "lull")]
        comment: String,
        /// Print the files written and the public key as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lull sign`.
#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The module to sign.
    file: PathBuf,
    /// The private key (OpenSSH format).
    #[arg(long, env = "LULL_KEY")]
    key: PathBuf,
    /// Print the signature's file and the signer's key as JSON.
    #[arg(long)]
    json: bool,
}

/// `lull verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The module whose signature to check.
    file: PathBuf,
    /// The trust list: an OpenSSH `allowed_signers` file.
    #[arg(long)]
    allowed_signers: PathBuf,
    /// Revoked keys: OpenSSH public keys, one per line.
    #[arg(long)]
    revoked_signers: Option<PathBuf>,
    /// The signature [default: FILE.sig].
    #[arg(long)]
    signature: Option<PathBuf>,
    /// Print the verdict as JSON: `{"file", "signature", "verified", "signer", "reason"}`.
    #[arg(long)]
    json: bool,
}

/// Exit code of `lull verify` when the signature is not accepted.
pub const EXIT_NOT_VERIFIED: u8 = 1;

/// Runs a key command.
pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Generate { out, comment, json } => {
            let key = generate(&out, &comment)?;
            let public = key.public_key().to_openssh()?;
            if json {
                super::print_json(&serde_json::json!({
                    "private_key": out,
                    "public_key_file": format!("{}.pub", out.display()),
                    "public_key": public,
                }))?;
            } else {
                println!(
                    "wrote {} and {}.pub\npublic key: {public}",
                    out.display(),
                    out.display(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Makes and writes a key pair.
pub fn generate(out: &Path, comment: &str) -> anyhow::Result<PrivateKey> {
    if out.exists() {
        bail!("{} already exists; not overwriting a key", out.display());
    }
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)?;
    key.set_comment(comment);
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    key.write_openssh_file(out, LineEnding::LF)
        .with_context(|| format!("writing {}", out.display()))?;
    let public = format!("{}\n", key.public_key().to_openssh()?);
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    std::fs::write(&pub_path, public).with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(key)
}

/// Reads a private key.
pub fn load(path: &Path) -> anyhow::Result<PrivateKey> {
    PrivateKey::read_openssh_file(path)
        .with_context(|| format!("reading the signing key {}", path.display()))
}

/// `lull sign FILE --key KEY`.
pub fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = load(&args.key)?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let sig = lull_protocol::signature::sign(&key, &bytes)?;
    let out = PathBuf::from(format!("{}.sig", args.file.display()));
    std::fs::write(&out, sig).with_context(|| format!("writing {}", out.display()))?;
    if args.json {
        super::print_json(&serde_json::json!({
            "file": args.file,
            "signature": out,
            "public_key": key.public_key().to_openssh()?,
        }))?;
    } else {
        println!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `lull verify FILE --allowed-signers F`: exit 0 when a listed signer signed exactly these
/// bytes, else [`EXIT_NOT_VERIFIED`] with the reason. Unreadable inputs are errors (exit 1 too,
/// with `error:`).
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let trust = lull_protocol::signature::TrustList::read_files(
        &args.allowed_signers,
        args.revoked_signers.as_deref(),
    )?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let sig_path = args
        .signature
        .unwrap_or_else(|| PathBuf::from(format!("{}.sig", args.file.display())));
    let signature = match std::fs::read_to_string(&sig_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", sig_path.display())),
    };
    let verdict = trust.verify(&bytes, signature.as_deref());
    if args.json {
        let (signer, reason) = match &verdict {
            Ok(principal) => (Some(principal.to_string()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        super::print_json(&serde_json::json!({
            "file": args.file,
            "signature": sig_path,
            "verified": verdict.is_ok(),
            "signer": signer,
            "reason": reason,
        }))?;
    } else {
        match &verdict {
            Ok(principal) => println!("{}: good signature by {principal}", args.file.display()),
            Err(e) => eprintln!("{}: not verified: {e}", args.file.display()),
        }
    }
    Ok(if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_VERIFIED)
    })
}
