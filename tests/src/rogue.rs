//! A hand-driven agent for tests of what a coordinator does with a hostile one: it enrolls,
//! says hello with the label `role = rogue`, takes the assignment of a job submitted for it, and
//! then sends whatever the test wants on its control stream.

use lull_agent::link::{self, Dialer};
use lull_protocol::Digest;
use lull_protocol::identity::Identity;
use lull_protocol::message::{
    AgentMessage, AgentStatus, Assignment, BlobReply, Capacity, CoordinatorMessage,
};

use crate::Cluster;

/// An enrolled agent the test drives by hand, connected and welcomed.
#[derive(Debug)]
pub struct Rogue {
    /// Its key.
    pub identity: Identity,
    /// Its connection.
    pub conn: quinn::Connection,
    /// Its control stream, towards the coordinator.
    pub send: quinn::SendStream,
    /// Its control stream, from the coordinator.
    pub recv: quinn::RecvStream,
}

/// What a [`Rogue`] needs of a cluster, taken before the test's async block.
#[derive(Debug, Clone)]
pub struct Facts {
    pin: Digest,
    addr: String,
    join_token: String,
    api: String,
    http_key: Option<String>,
    key: std::path::PathBuf,
    submitter: String,
}

impl Facts {
    /// The facts of `cluster`.
    pub fn of(cluster: &Cluster) -> Self {
        Self {
            pin: cluster
                .coordinator_key()
                .parse()
                .expect("the coordinator's key"),
            addr: cluster.quic_addr().to_string(),
            join_token: cluster.join_token().to_owned(),
            api: cluster.api_url(),
            http_key: cluster.http_key().map(str::to_owned),
            key: cluster.key().to_owned(),
            submitter: cluster.token().to_owned(),
        }
    }
}

impl Rogue {
    /// Enrolls a fresh key as `id` and says hello, with one slot and the label `role = rogue`.
    pub async fn join(facts: &Facts, id: &str) -> Rogue {
        let identity = Identity::ephemeral(&["lull-agent"]).expect("a key");
        let dialer = Dialer::new(Some(facts.pin), Some(&identity)).expect("a dialer");
        let conn = dialer.connect(&facts.addr).await.expect("connecting");
        link::enroll(&conn, &facts.join_token, id, "rogue")
            .await
            .expect("enrolling");
        let (mut send, mut recv) = conn.open_bi().await.expect("a control stream");
        let capacity = Capacity {
            cores: 2,
            memory_total: 8 << 30,
            memory_available: 4 << 30,
            slots: 1,
            max_task_memory: 1 << 30,
            os: "linux".into(),
            arch: "x86_64".into(),
            labels: [("role".to_string(), "rogue".to_string())].into(),
            wasmtime: "48.0.8".into(),
        };
        let hello = AgentMessage::Hello {
            protocol_version: lull_protocol::PROTOCOL_VERSION,
            agent_id: id.into(),
            name: "rogue".into(),
            capacity,
            running: vec![],
            status: AgentStatus::default(),
            compiled: vec![],
        };
        link::write_frame(&mut send, &hello).await.expect("hello");
        let welcome: Option<CoordinatorMessage> =
            link::read_frame(&mut recv).await.expect("an answer");
        assert!(
            matches!(welcome, Some(CoordinatorMessage::Welcome { .. })),
            "{welcome:?}"
        );
        Rogue {
            identity,
            conn,
            send,
            recv,
        }
    }

    /// Submits `job` (which should ask for `label.role == rogue`) with `lull submit` and returns
    /// the assignment this agent gets for it.
    pub async fn take(&mut self, facts: &Facts, job: &std::path::Path) -> Assignment {
        let (api, http_key, key, submitter) = (
            facts.api.clone(),
            facts.http_key.clone().unwrap_or_default(),
            facts.key.clone(),
            facts.submitter.clone(),
        );
        let job = job.to_owned();
        let submitted = tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::binary("lull"))
                .args(["--coordinator", &api])
                .env("LULL_COORDINATOR_KEY", http_key)
                .args([
                    "submit",
                    job.to_str().unwrap(),
                    "--key",
                    key.to_str().unwrap(),
                ])
                .env("LULL_TOKEN", submitter)
                .output()
                .unwrap()
        });
        let assignment = match self.next().await {
            Some(CoordinatorMessage::Assign(a)) => *a,
            other => panic!("expected an assignment, got {other:?}"),
        };
        let out = submitted.await.unwrap();
        assert!(out.status.success(), "{out:?}");
        assignment
    }

    /// Uploads `bytes` as a blob, as an agent uploads what its guests wrote; returns its
    /// digest.
    pub async fn put_blob(&self, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let (mut send, mut recv) = self.conn.open_bi().await.expect("a blob stream");
        let put = AgentMessage::PutBlob {
            digest,
            size: bytes.len() as u64,
        };
        link::write_frame(&mut send, &put)
            .await
            .expect("the blob's frame");
        send.write_all(bytes).await.expect("the blob's bytes");
        send.finish().expect("the blob's end");
        match link::read_frame::<BlobReply>(&mut recv).await {
            Ok(Some(BlobReply::Ok { .. })) => digest,
            other => panic!("uploading a blob: {other:?}"),
        }
    }

    /// Sends one message on the control stream.
    pub async fn say(&mut self, msg: &AgentMessage) {
        link::write_frame(&mut self.send, msg)
            .await
            .expect("writing to the coordinator");
    }

    /// The next message from the coordinator, `None` when the stream ended.
    pub async fn next(&mut self) -> Option<CoordinatorMessage> {
        link::read_frame(&mut self.recv)
            .await
            .expect("reading from the coordinator")
    }
}
