//! A small HTTPS client for the coordinator API, shared by `segmesh-node` and
//! `segmeshctl` (feature `client`).
//!
//! One TLS connection per request (HTTP/1.1): control traffic is rare and the
//! long-lived netmap stream holds its own connection. Server trust is either
//! a CA certificate (after enrollment, and for segmeshctl) or, for the very
//! first contact, only the SHA-256 of the CA from the join token: the server
//! must present that CA in its chain and its certificate must verify against
//! it. Nothing else is trusted, and no system roots are loaded.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};

/// How the client decides to trust the coordinator.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The coordinator's CA certificate(s).
    Ca(Vec<CertificateDer<'static>>),
    /// Only the hex SHA-256 of the CA certificate (join-token pinning).
    PinnedSha256(String),
}

/// Client-side failures, with messages meant for operators.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad coordinator URL {0:?}: expected https://host[:port]")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP request: {0}")]
    Request(String),
}

/// The pinned CA was not found in the coordinator's certificate chain.
/// (rustls prints the `Debug` form, so both forms carry the message.)
struct PinMismatch;

impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the coordinator's CA does not match the CA fingerprint in the join token \
             (impostor coordinator or wrong token)",
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Verifies the server against the CA whose SHA-256 is pinned, taking that CA
/// from the chain the server presents.
#[derive(Debug)]
struct PinnedVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    fn algs(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| sha256_hex(c).eq_ignore_ascii_case(&self.pin))
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(PinMismatch)),
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algs())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algs())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs().supported_schemes()
    }
}

/// The ring provider: the only crypto backend in the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client certificate chain and its key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Builds the TLS client configuration.
pub fn tls_config(
    trust: &ServerTrust,
    identity: Option<Identity>,
) -> Result<ClientConfig, ClientError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        ServerTrust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c.clone())?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::PinnedSha256(pin) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: pin.clone(),
                    provider,
                }))
        }
    };
    Ok(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The `Upgrade` protocol of the node session (GET /v1/session).
pub const SESSION_PROTOCOL: &str = "segmesh-session/1";

/// A coordinator endpoint plus TLS settings. Clones share the kept-alive
/// connection of [`HttpsClient::request`].
#[derive(Clone)]
pub struct HttpsClient {
    url: String,
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
    idle: Arc<tokio::sync::Mutex<Option<Sender>>>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// Splits `https://host[:port][/]` into host and port (default 443).
pub fn parse_url(url: &str) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::Url(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => 443,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (rest.to_string(), 443),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

impl HttpsClient {
    pub fn new(url: &str, tls: Arc<ClientConfig>) -> Result<Self, ClientError> {
        let (host, port) = parse_url(url)?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            host,
            port,
            tls,
            idle: Arc::default(),
        })
    }

    /// The same endpoint without the kept-alive connection: a request on it
    /// opens a new one, so a `Connect` error proves the request never left
    /// (non-idempotent calls rely on that).
    pub fn fresh(&self) -> Self {
        Self {
            idle: Arc::default(),
            ..self.clone()
        }
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a new TLS connection and HTTP/1.1 handshake.
    async fn connect(&self) -> Result<Sender, ClientError> {
        let connect_err = |source| ClientError::Connect {
            url: self.url.clone(),
            source,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        let server_name = match self.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.host.clone())
                .map_err(|_| ClientError::Url(self.url.clone()))?,
        };
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(server_name, tcp)
            .await
            .map_err(connect_err)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes, or hands
            // the connection over to a session (see `HttpsClient::session`).
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn build(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        req.body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .map_err(|e| ClientError::Request(e.to_string()))
    }

    /// One request; the whole body is read. The connection is kept and
    /// reused by the next request (acks and endpoint reports would
    /// otherwise pay a TLS handshake each). A request that fails on a
    /// reused connection (the server closed it) is sent once more on a new
    /// one; the API's mTLS routes are idempotent.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        let mut idle = self.idle.lock().await;
        if let Some(mut sender) = idle.take()
            && sender.ready().await.is_ok()
        {
            let req = self.build(method, path, bearer, body.as_deref())?;
            if let Ok(resp) = sender.send_request(req).await {
                let status = resp.status().as_u16();
                if let Ok(body) = resp.into_body().collect().await {
                    *idle = Some(sender);
                    return Ok(Response {
                        status,
                        body: body.to_bytes(),
                    });
                }
            }
        }
        let mut sender = self.connect().await?;
        let req = self.build(method, path, bearer, body.as_deref())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        *idle = Some(sender);
        Ok(Response { status, body })
    }

    /// Opens a long-lived newline-delimited stream. A non-2xx reply is
    /// returned as `Err(response)` with the body read.
    pub async fn stream(&self, path: &str) -> Result<Result<LineStream, Response>, ClientError> {
        // A dedicated connection: the stream holds it for its lifetime.
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(self.build("GET", path, None, None)?)
            .await?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.into_body().collect().await?.to_bytes();
            return Ok(Err(Response { status, body }));
        }
        Ok(Ok(LineStream {
            source: Source::Body(resp.into_body()),
            buf: Vec::new(),
        }))
    }

    /// Opens a node session: an HTTP/1.1 upgrade to a bidirectional
    /// newline-delimited stream on one connection. The coordinator sends
    /// netmaps and heartbeats; the node sends acks and endpoint reports, so
    /// it needs no second connection (and no TLS handshake per ack). A
    /// refusal (any status but 101) is returned as `Err(response)`.
    pub async fn session(
        &self,
        path: &str,
    ) -> Result<Result<(LineStream, LineSink), Response>, ClientError> {
        let mut sender = self.connect().await?;
        let mut req = self.build("GET", path, None, None)?;
        let headers = req.headers_mut();
        headers.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        headers.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static(SESSION_PROTOCOL),
        );
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        if status != 101 {
            let body = resp.into_body().collect().await?.to_bytes();
            return Ok(Err(Response { status, body }));
        }
        let io = TokioIo::new(hyper::upgrade::on(resp).await?);
        let (read, write) = tokio::io::split(io);
        Ok(Ok((
            LineStream {
                source: Source::Upgraded(read),
                buf: Vec::new(),
            },
            LineSink { write },
        )))
    }
}

/// The sending half of a session: one JSON value per line.
pub struct LineSink {
    write: WriteHalf<TokioIo<Upgraded>>,
}

impl std::fmt::Debug for LineSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineSink").finish_non_exhaustive()
    }
}

impl LineSink {
    /// Sends `msg` as one line and flushes it.
    pub async fn send<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(msg).map_err(|e| ClientError::Request(e.to_string()))?;
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .map_err(|e| ClientError::Request(format!("session write: {e}")))?;
        self.write
            .flush()
            .await
            .map_err(|e| ClientError::Request(format!("session write: {e}")))
    }
}

/// Where a [`LineStream`] reads from.
enum Source {
    /// A streaming response body (GET /v1/stream).
    Body(Incoming),
    /// The read half of an upgraded connection (GET /v1/session).
    Upgraded(ReadHalf<TokioIo<Upgraded>>),
}

/// Reads one line at a time from a streaming response body or a session.
pub struct LineStream {
    source: Source,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineStream")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Lines longer than this end the stream: a netmap for 10,000 peers is a few
/// MiB, a line without end is an attack.
const MAX_LINE: usize = 64 << 20;

impl LineStream {
    /// The next non-empty line, or `None` when the server closed the stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).take(pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(ClientError::Request("stream line too long".into()));
            }
            match &mut self.source {
                Source::Body(body) => match body.frame().await {
                    None => return Ok(None),
                    Some(frame) => {
                        if let Ok(data) = frame?.into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                },
                Source::Upgraded(read) => {
                    self.buf.reserve(16 << 10);
                    let n = read
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| ClientError::Request(format!("session read: {e}")))?;
                    if n == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:8443").unwrap(),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            parse_url("https://c.example/").unwrap(),
            ("c.example".into(), 443)
        );
        assert_eq!(
            parse_url("https://[fd00::1]:9").unwrap(),
            ("fd00::1".into(), 9)
        );
        for bad in [
            "http://x",
            "https://",
            "https://x:y",
            "https://x/path",
            "https://[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
