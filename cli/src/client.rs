//! The coordinator's HTTP API as the `lull` command uses it.

use std::path::Path;

use anyhow::{Context, bail};
use lull_protocol::Digest;
use lull_protocol::api::{ErrorBody, StartUpload, UploadState};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A TLS client configuration trusting the public certificate authorities (Mozilla's list,
/// built in), for a coordinator serving an operator's certificate.
fn public_roots() -> anyhow::Result<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What [`Client::upload`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// The blob's size.
    pub size: u64,
    /// Bytes sent now.
    pub sent: u64,
    /// Where an earlier, interrupted upload had stopped (0 for a fresh one).
    pub resumed_from: u64,
}

/// The body of a POST to a route that takes none: an empty JSON object.
#[derive(Debug, Serialize)]
struct NoBody {}

/// Where the coordinator is when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7080";

/// How to find the key to pin, for messages.
const PIN_HINT: &str = "pin the coordinator's key with --coordinator-key sha256:HEX (or \
    LULL_COORDINATOR_KEY, or coordinator_key in your settings): `lull-coordinator serve` prints \
    it at start, `lull-coordinator token create --user NAME` with each token";

/// The coordinator did not answer at all (as opposed to answering with an error).
#[derive(Debug)]
pub struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A client of one coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Whether a key is pinned (for messages).
    pinned: bool,
}

impl Client {
    /// A client for `base` (`https://host:port`; a bare `host:port` gets `https://`), sending
    /// `token` (a person's token) with every request when given. With `pin` (`sha256:HEX`),
    /// only the server whose key hashes to it is trusted, whatever its certificate says (the
    /// coordinator's own certificate is self-signed); without, an HTTPS server needs a
    /// certificate from a public authority for its name.
    pub fn new(base: &str, token: Option<&str>, pin: Option<&str>) -> anyhow::Result<Self> {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_owned()
        } else {
            format!("https://{}", base.trim_end_matches('/'))
        };
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            bail!("the coordinator's address {base} is neither https:// nor http://");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .context("the token holds characters a token cannot have")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let pin = pin
            .map(|p| {
                p.trim().parse::<Digest>().map_err(|e| {
                    anyhow::anyhow!("--coordinator-key {p:?}: {e} (expected sha256:HEX, as the coordinator prints it)")
                })
            })
            .transpose()?;
        let tls = match pin {
            Some(pin) => lull_protocol::identity::PinnedKey::client_config(pin)?,
            None => public_roots()?,
        };
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .use_preconfigured_tls(tls)
            .build()
            .context("setting up the HTTP client")?;
        Ok(Self {
            base,
            http,
            pinned: pin.is_some(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn check(
        &self,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = resp.map_err(|e| Unreachable(self.unreachable(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        match resp.json::<ErrorBody>().await {
            Ok(body) => bail!("{}", body.error.message),
            Err(_) => bail!("the coordinator answered {status}"),
        }
    }

    /// Why the coordinator could not be reached, with what to do about it.
    fn unreachable(&self, e: &reqwest::Error) -> String {
        // reqwest's own text is "error sending request"; the cause says what went wrong.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let hint = if self.base.starts_with("http://") {
            "start one with `lull dev`, or point at yours with --coordinator https://HOST:PORT \
             or LULL_COORDINATOR (a coordinator outside `lull dev` speaks HTTPS)"
                .to_owned()
        } else if cause.contains("not the pinned") {
            "this is not the coordinator whose key you pinned (or its key changed): check \
             --coordinator and --coordinator-key"
                .to_owned()
        } else if !self.pinned && cause.to_ascii_lowercase().contains("certificate") {
            PIN_HINT.to_owned()
        } else {
            "is it running, and is the address right? point at it with --coordinator \
             https://HOST:PORT or LULL_COORDINATOR"
                .to_owned()
        };
        format!(
            "cannot reach the coordinator at {}: {cause}\n  {hint}",
            self.base
        )
    }

    /// The coordinator's address, as used.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET a JSON document that may not exist: `None` for 404 Not Found.
    pub async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| Unreachable(self.unreachable(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check(Ok(resp)).await?;
        Ok(Some(resp.json().await?))
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .check(self.http.get(self.url(path)).send().await)
            .await?;
        resp.json()
            .await
            .context("reading the coordinator's answer")
    }

    /// DELETE a resource, returning the JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .check(self.http.delete(self.url(path)).send().await)
            .await?;
        resp.json()
            .await
            .context("reading the coordinator's answer")
    }

    /// Sends a JSON document with `method`, returning the JSON answer.
    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .check(
                self.http
                    .request(method, self.url(path))
                    .json(body)
                    .send()
                    .await,
            )
            .await?;
        resp.json()
            .await
            .context("reading the coordinator's answer")
    }

    /// POST a JSON document, returning the JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// PUT a JSON document, returning the JSON answer.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(reqwest::Method::PUT, path, body).await
    }

    /// PATCH with a JSON document, returning the JSON answer.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(reqwest::Method::PATCH, path, body).await
    }

    /// POST to a route that takes no body (an empty JSON object is sent), returning the JSON
    /// answer.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.post(path, &NoBody {}).await
    }

    /// Uploads a file as the blob `digest` in chunks of at most `chunk` bytes, each with its
    /// own sha256, continuing an earlier upload of the same blob where it stopped. A chunk
    /// that fails to arrive is sent again (up to a few times), from where the coordinator says
    /// the upload stands.
    pub async fn upload(
        &self,
        digest: Digest,
        file: &Path,
        chunk: u64,
    ) -> anyhow::Result<Uploaded> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let size = tokio::fs::metadata(file)
            .await
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        let mut state: UploadState = self
            .post("/api/v1/uploads", &StartUpload { digest, size })
            .await?;
        let resumed_from = state.offset;
        let mut sent = 0u64;
        let mut f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let chunk = chunk.min(state.max_chunk).max(1);
        let mut buf = Vec::new();
        let mut failures = 0;
        while !state.complete {
            let len = chunk.min(size - state.offset);
            f.seek(std::io::SeekFrom::Start(state.offset)).await?;
            buf.resize(len as usize, 0);
            f.read_exact(&mut buf)
                .await
                .with_context(|| format!("reading {} (did it change?)", file.display()))?;
            let resp = self
                .http
                .patch(self.url(&format!("/api/v1/uploads/{digest}")))
                .header("upload-offset", state.offset)
                .header("chunk-digest", Digest::of(&buf).to_string())
                .body(buf.clone())
                .send()
                .await;
            match self.check(resp).await {
                Ok(r) => {
                    state = r.json().await.context("reading the coordinator's answer")?;
                    sent += len;
                }
                Err(e) if failures < 3 && e.downcast_ref::<Unreachable>().is_none() => {
                    // Where does it stand now (another request may have moved it on)? If that
                    // fails too, the chunk's own error is the one that explains it.
                    failures += 1;
                    state = match self.get(&format!("/api/v1/uploads/{digest}")).await {
                        Ok(state) => state,
                        Err(_) => return Err(e),
                    };
                    eprintln!("warning: {e:#}; continuing from byte {}", state.offset);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Uploaded {
            size,
            sent,
            resumed_from,
        })
    }

    /// Downloads a blob to a file.
    pub async fn download(&self, path: &str, dest: &Path) -> anyhow::Result<()> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut f = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("creating {}", dest.display()))?;
        self.copy_to(path, &mut f, &dest.display().to_string())
            .await
    }

    /// Downloads a blob into `to` (`what`: where it goes, for messages), as it arrives.
    pub async fn copy_to(
        &self,
        path: &str,
        to: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized),
        what: &str,
    ) -> anyhow::Result<()> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let resp = self
            .check(self.http.get(self.url(path)).send().await)
            .await?;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            to.write_all(&chunk.context("downloading")?)
                .await
                .with_context(|| format!("writing {what}"))?;
        }
        to.flush().await?;
        Ok(())
    }
}
