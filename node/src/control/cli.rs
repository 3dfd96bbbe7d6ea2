//! The coordinator side of the `segmesh-node` command line: `join`, and
//! `run` in coordinator mode (a `control.json` beside `node.toml`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use segmesh_config::NodeName;
use segmesh_config::control::EndpointsReport;
use tokio::sync::{mpsc, oneshot};

use super::{ControlClient, JoinOptions, StateDir, join};
use crate::dataplane;

/// `segmesh-node join`
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The join token (`smj1.…`); or use --token-file / SEGMESH_JOIN_TOKEN.
    #[arg(env = "SEGMESH_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the join token from this file instead.
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The node's name (default: generated from the token's name prefix).
    #[arg(long)]
    pub name: Option<NodeName>,
    /// Where keys, certificates, the netmap cache and node.toml are written.
    #[arg(
        long,
        env = "SEGMESH_NODE_STATE_DIR",
        default_value = "/var/lib/segmesh-node"
    )]
    pub state_dir: PathBuf,
    /// WireGuard UDP port.
    #[arg(long, default_value_t = 51820)]
    pub listen_port: u16,
    /// Underlay addresses to advertise as endpoints (the coordinator also
    /// adds the address it sees the node connect from).
    #[arg(long = "advertise", value_name = "ADDR")]
    pub advertise: Vec<IpAddr>,
    /// Replace an existing enrollment in the state directory.
    #[arg(long)]
    pub force: bool,
}

/// Runs `join`.
pub fn join_command(args: JoinArgs) -> anyhow::Result<()> {
    let token = match (args.token, &args.token_file) {
        (Some(t), _) => t,
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => {
            bail!("give the join token as an argument, --token-file or SEGMESH_JOIN_TOKEN")
        }
    };
    let dir = StateDir::new(&args.state_dir);
    let opts = JoinOptions {
        token,
        name: args.name,
        state_dir: dir.clone(),
        listen_port: args.listen_port,
        advertise: args.advertise,
        force: args.force,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let joined = rt.block_on(join(opts))?;
    let addrs: Vec<String> = joined
        .state
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "joined as {} ({}), public key {}; {} peer(s) in the first netmap",
        joined.state.name,
        addrs.join(", "),
        joined.public_key,
        joined.netmap.peers.len()
    );
    println!(
        "start with: segmesh-node run --config {}",
        dir.node_toml().display()
    );
    Ok(())
}

/// The state directory when `node.toml` belongs to an enrolled node.
pub fn coordinator_state(config_path: &Path) -> Option<StateDir> {
    let dir = StateDir::new(config_path.parent().unwrap_or(Path::new(".")));
    dir.is_enrolled().then_some(dir)
}

/// Runs the data plane fed by the coordinator stream. The cached netmap is
/// verified before the data plane starts from it; while the coordinator is
/// unreachable the node keeps forwarding with it.
pub async fn run_coordinated(
    dir: StateDir,
    mut settings: dataplane::Settings,
) -> anyhow::Result<()> {
    let endpoints = EndpointsReport {
        addresses: Vec::new(),
        listen_port: settings.config.listen_port,
    };
    let client = ControlClient::load(&dir, endpoints)?;
    if client.current().is_none() {
        bail!(
            "{}: no cached netmap; run `segmesh-node join` again",
            dir.netmap().display()
        );
    }
    let (tx, rx) = mpsc::channel(4);
    settings.feed = Some(rx);
    let (rotate_tx, rotate_rx) = mpsc::channel(1);
    settings.rotator = Some(rotate_tx);
    let mut client = client.with_rotation_requests(rotate_rx);
    let control = tokio::spawn(async move {
        let apply = |cmd| {
            let tx = tx.clone();
            async move {
                let (reply, answer) = oneshot::channel();
                tx.send((cmd, reply))
                    .await
                    .map_err(|_| "data plane stopped".to_string())?;
                answer.await.map_err(|_| "data plane stopped".to_string())?
            }
        };
        client.run(apply, None, std::future::pending()).await;
    });
    let result = dataplane::run(settings).await;
    control.abort();
    result
}
