//! `segmesh-node join TOKEN`: generate keys locally, pin the coordinator's
//! CA by the token's hash, enroll, and write the state directory.

use std::net::IpAddr;
use std::sync::Arc;

use rand_core::OsRng;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use segmesh_config::client::{ClientError, HttpsClient, ServerTrust, tls_config};
use segmesh_config::control::{
    EndpointsReport, EnrollRequest, EnrollResponse, ErrorBody, JoinToken, TokenError,
};
use segmesh_config::{NetMap, NodeName, PublicKey};
use sha2::{Digest as _, Sha256};

use super::cache::{CacheError, NetmapCache};
use super::files::{ControlState, FileError, StateDir, write_atomic, write_key};

/// What to join with.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub token: String,
    pub name: Option<NodeName>,
    pub state_dir: StateDir,
    /// WireGuard UDP port written into node.toml and reported as endpoint.
    pub listen_port: u16,
    /// Underlay addresses to advertise besides the one the coordinator sees.
    pub advertise: Vec<IpAddr>,
    /// Replace an existing enrollment in the state directory.
    pub force: bool,
}

/// Why joining failed. Never carries the token secret.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0} already holds an enrolled node; use --force to replace it")]
    AlreadyEnrolled(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("key generation: {0}")]
    Keys(String),
    #[error("coordinator {url}: {source}")]
    Connect { url: String, source: ClientError },
    #[error("coordinator refused the enrollment ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("coordinator reply is invalid: {0}")]
    Reply(String),
    #[error("no coordinator in the token could be reached")]
    NoCoordinator,
}

/// The result of a successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub state: ControlState,
    pub public_key: PublicKey,
    pub netmap: NetMap,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Enrolls this node. Keys are generated here and never leave the node.
pub async fn join(opts: JoinOptions) -> Result<Joined, JoinError> {
    let token = JoinToken::parse(&opts.token)?;
    let dir = &opts.state_dir;
    if dir.is_enrolled() && !opts.force {
        return Err(JoinError::AlreadyEnrolled(dir.dir.display().to_string()));
    }
    let wg = boringtun::x25519::StaticSecret::random_from_rng(OsRng);
    let public_key = PublicKey::from_bytes(boringtun::x25519::PublicKey::from(&wg).to_bytes());
    let tls_key = KeyPair::generate().map_err(|e| JoinError::Keys(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr_pem = params
        .serialize_request(&tls_key)
        .and_then(|c| c.pem())
        .map_err(|e| JoinError::Keys(e.to_string()))?;
    let req = EnrollRequest {
        secret: token.secret.clone(),
        name: opts.name.clone(),
        public_key,
        csr_pem,
        endpoints: EndpointsReport {
            addresses: opts.advertise.clone(),
            listen_port: opts.listen_port,
        },
    };
    let body = serde_json::to_vec(&req).map_err(|e| JoinError::Reply(e.to_string()))?;
    let tls = Arc::new(
        tls_config(&ServerTrust::PinnedSha256(token.ca_sha256.clone()), None).map_err(
            |source| JoinError::Connect {
                url: String::new(),
                source,
            },
        )?,
    );

    let mut last = JoinError::NoCoordinator;
    let mut reply = None;
    for url in &token.urls {
        let client =
            HttpsClient::new(url, Arc::clone(&tls)).map_err(|source| JoinError::Connect {
                url: url.clone(),
                source,
            })?;
        match client
            .request("POST", "/v1/enroll", None, Some(body.clone()))
            .await
        {
            Ok(r) if r.status == 200 => {
                reply = Some(r.body);
                break;
            }
            Ok(r) => {
                let message = serde_json::from_slice::<ErrorBody>(&r.body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
                return Err(JoinError::Refused {
                    status: r.status,
                    message,
                });
            }
            // A pin mismatch or a down coordinator: try the next URL.
            Err(source) => {
                last = JoinError::Connect {
                    url: url.clone(),
                    source,
                }
            }
        }
    }
    let reply = reply.ok_or(last)?;
    let resp: EnrollResponse =
        serde_json::from_slice(&reply).map_err(|e| JoinError::Reply(e.to_string()))?;
    let ca = CertificateDer::from_pem_slice(resp.ca_pem.as_bytes())
        .map_err(|e| JoinError::Reply(format!("CA certificate: {e}")))?;
    if !sha256_hex(&ca).eq_ignore_ascii_case(&token.ca_sha256) {
        return Err(JoinError::Reply(
            "returned CA does not match the pinned fingerprint".into(),
        ));
    }
    resp.netmap
        .validate()
        .map_err(|e| JoinError::Reply(e.to_string()))?;
    if resp.netmap.node.public_key != public_key {
        return Err(JoinError::Reply("netmap is for another key".into()));
    }

    dir.create()?;
    write_key(&dir.private_key(), &wg.to_bytes())?;
    write_atomic(&dir.tls_key(), tls_key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.tls_cert(), resp.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.ca_cert(), resp.ca_pem.as_bytes(), 0o644)?;
    let state = ControlState {
        name: resp.name.clone(),
        urls: token.urls.clone(),
        ca_sha256: token.ca_sha256.clone(),
        addresses: resp.addresses.clone(),
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| JoinError::Reply(e.to_string()))?;
    NetmapCache::new(dir.clone(), &wg.to_bytes()).save(&resp.netmap)?;
    let node_toml = format!(
        "# Written by `segmesh-node join`; the coordinator keeps netmap.json current.\n\
         private_key_file = \"private.key\"\nnetmap_file = \"netmap.json\"\nlisten_port = {}\n",
        opts.listen_port
    );
    write_atomic(&dir.node_toml(), node_toml.as_bytes(), 0o644)?;
    // Last: its presence marks the directory as enrolled.
    write_atomic(&dir.control(), &json, 0o644)?;
    Ok(Joined {
        state,
        public_key,
        netmap: resp.netmap,
    })
}
