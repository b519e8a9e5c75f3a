//! The agent's identity and its enrollment with a coordinator.
//!
//! An agent keeps in its data directory a stable ID (`agent-id`) and a key pair with a
//! self-signed certificate (`tls/agent.key.der`, `tls/agent.crt.der`), made at first use. It
//! presents the certificate on every connection. A coordinator admits only keys enrolled with
//! it: the agent proves its right to enroll once, with a join token that an operator made with
//! `lull-coordinator token create`, over a connection that pins the coordinator's key, so the
//! token cannot be given to an impostor. After that the key alone is the agent's credential;
//! the token is not kept.

use std::path::Path;

use anyhow::{Context, bail};
use lull_protocol::Digest;
use lull_protocol::identity::Identity;

use crate::link::{self, Dialer};

/// The agent's stable ID and key, made in `data` at first use.
pub fn local_identity(data: &Path) -> anyhow::Result<(String, Identity)> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let id = agent_id(data)?;
    let identity = Identity::load_or_create(&data.join("tls"), "agent", &["lull-agent"])?;
    Ok((id, identity))
}

/// The agent's stable ID, made at first start.
fn agent_id(data: &Path) -> anyhow::Result<String> {
    let path = data.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = format!("a-{:016x}", rand::random::<u64>());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// What an enrollment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The agent's ID.
    pub agent_id: String,
    /// The hash of the agent's public key, as the coordinator now knows it.
    pub key: Digest,
    /// Whether the key was enrolled already (the token was not used).
    pub already: bool,
}

/// Enrolls the agent whose data directory is `data` (making its ID and key when missing) with
/// the coordinator at `coordinator`, whose key must hash to `pin`, using a join token.
pub async fn enroll(
    coordinator: &str,
    pin: Digest,
    data: &Path,
    name: &str,
    token: &str,
) -> anyhow::Result<Enrollment> {
    if token.trim().is_empty() {
        bail!("the join token is empty");
    }
    let (agent_id, identity) = local_identity(data)?;
    let dialer = Dialer::new(Some(pin), Some(&identity))?;
    let conn = dialer.connect(coordinator).await?;
    let result = link::enroll(&conn, token, &agent_id, name).await;
    conn.close(0u32.into(), b"enrolled");
    dialer.wait_idle().await;
    let already =
        result.with_context(|| format!("enrolling with the coordinator at {coordinator}"))?;
    Ok(Enrollment {
        agent_id,
        key: identity.public_key_hash,
        already,
    })
}
