//! Talking to a live coordinator: where it is, how to trust it, and the
//! admin token. Each comes from a flag, an environment variable, or the
//! config file (`--config`, `SEGMESH_CTL_CONFIG`, default
//! `~/.config/segmesh/ctl.toml`), in that order. The admin token is read
//! from a file only, never from argv, and never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use segmesh_config::client::{HttpsClient, ServerTrust, tls_config};
use segmesh_config::control::ErrorBody;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Connection flags shared by every live command.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// Coordinator URL, e.g. https://10.0.0.1:8443.
    #[arg(long, env = "SEGMESH_URL", global = true)]
    pub url: Option<String>,
    /// File holding the admin token (created 0600 by the coordinator).
    #[arg(long, env = "SEGMESH_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// The coordinator's CA certificate (ca.pem in its data dir).
    #[arg(long, env = "SEGMESH_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// segmeshctl config file with url, admin_token_file, ca_file.
    #[arg(long = "ctl-config", env = "SEGMESH_CTL_CONFIG", global = true)]
    pub ctl_config: Option<PathBuf>,
}

/// The config file's keys (all optional; flags and env win).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtlFile {
    url: Option<String>,
    admin_token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

fn load_file(explicit: Option<&Path>) -> anyhow::Result<CtlFile> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("HOME") {
            Some(home) => {
                let p = PathBuf::from(home).join(".config/segmesh/ctl.toml");
                if !p.exists() {
                    return Ok(CtlFile::default());
                }
                p
            }
            None => return Ok(CtlFile::default()),
        },
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}",
            path.display(),
            segmesh_config::toml_error_message(&text, &e)
        )
    })
}

/// A connected admin client.
#[derive(Debug)]
pub struct Live {
    client: HttpsClient,
    token: String,
}

impl Live {
    /// Resolves flags, env and config file into a client.
    pub fn connect(args: &ConnArgs) -> anyhow::Result<Self> {
        let file = load_file(args.ctl_config.as_deref())?;
        let url = args
            .url
            .clone()
            .or(file.url)
            .context("no coordinator URL: use --url, SEGMESH_URL or url in the ctl config")?;
        let token_file = args.admin_token_file.clone().or(file.admin_token_file).context(
            "no admin token: use --admin-token-file, SEGMESH_ADMIN_TOKEN_FILE or admin_token_file in the ctl config",
        )?;
        let ca_file = args.ca_file.clone().or(file.ca_file).context(
            "no CA certificate: use --ca-file, SEGMESH_CA_FILE or ca_file in the ctl config",
        )?;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading admin token file {}", token_file.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("admin token file {} is empty", token_file.display());
        }
        let pem = std::fs::read(&ca_file)
            .with_context(|| format!("reading CA file {}", ca_file.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: not a PEM certificate", ca_file.display()))?;
        if certs.is_empty() {
            bail!("{}: no certificate found", ca_file.display());
        }
        let tls = tls_config(&ServerTrust::Ca(certs), None)?;
        let client = HttpsClient::new(&url, Arc::new(tls))?;
        Ok(Self { client, token })
    }

    /// Sends a request and decodes a JSON reply; an error reply becomes an
    /// error carrying the coordinator's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let resp = self
            .client
            .request(method, path, Some(&self.token), body)
            .await?;
        if !(200..300).contains(&resp.status) {
            let msg = serde_json::from_slice::<ErrorBody>(&resp.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).into_owned());
            bail!("coordinator refused ({}): {msg}", resp.status);
        }
        serde_json::from_slice(&resp.body).context("unexpected reply from the coordinator")
    }
}

/// Runs an async command on a small runtime (the CLI is otherwise sync).
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(f))
}

/// Formats unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(
        |_| unix.to_string(),
        |t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        },
    )
}
