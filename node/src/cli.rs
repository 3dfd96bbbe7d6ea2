//! `segmesh-node`: the command line. Parsing and the small commands live
//! here; `main.rs` only calls [`main`].

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use boringtun::x25519;
use clap::{Parser, Subcommand};
use segmesh_config::{NodeConfig, PublicKey};

use crate::{control, ctlsock, dataplane, status_fmt};

/// segmesh node: WireGuard tunnels that enforce a netmap.
#[derive(Debug, Parser)]
#[command(name = "segmesh-node", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a private key file (mode 0600) and print its public key.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Read a private key on stdin, print its public key.
    Pubkey,
    /// Enroll with a coordinator using a join token (keys are generated here).
    Join(control::cli::JoinArgs),
    /// Run the node in the foreground.
    Run {
        /// The node's config file.
        #[arg(
            long,
            env = "SEGMESH_NODE_CONFIG",
            default_value = "/etc/segmesh/node.toml"
        )]
        config: PathBuf,
    },
    /// Replace the WireGuard key of a running, enrolled node: the node
    /// generates the key, the coordinator hands it to the peers, the node
    /// switches once they have it (one handshake's worth of interruption).
    RotateKey {
        /// Find the control socket through this config file.
        #[arg(long, env = "SEGMESH_NODE_CONFIG", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The control socket (default: the one of interface segmesh0).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show peers, endpoints, handshakes, bytes and drops of a running node.
    Status {
        /// Find the control socket through this config file.
        #[arg(long, env = "SEGMESH_NODE_CONFIG", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The control socket (default: the one of interface segmesh0).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Docs(segmesh_config::cli_docs::DocsCommand),
}

/// Parses a base64 private key (as `wg genkey` writes it).
pub fn parse_private_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = B64
        .decode(text.trim())
        .context("private key is not base64")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("private key has {} bytes, expected 32", b.len()))
}

/// The public key of a private key.
pub fn public_of(secret: [u8; 32]) -> PublicKey {
    PublicKey::from_bytes(x25519::PublicKey::from(&x25519::StaticSecret::from(secret)).to_bytes())
}

/// Reads a private key file, refusing one that group or others can read:
/// a key others can read is a key others may hold.
pub fn read_private_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading private key {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "private key {} is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading private key {}", path.display()))?;
    parse_private_key(&text).with_context(|| format!("private key {}", path.display()))
}

/// Creates a new key file (0600, never overwriting) and returns its public key.
pub fn keygen(out: &Path) -> anyhow::Result<PublicKey> {
    let secret = x25519::StaticSecret::random_from_rng(rand_core::OsRng);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    // The umask cannot loosen 0600, but be explicit in case the file system ignores modes.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{}", B64.encode(secret.to_bytes()))?;
    f.sync_all()?;
    Ok(PublicKey::from_bytes(
        x25519::PublicKey::from(&secret).to_bytes(),
    ))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    let coordinated = control::cli::coordinator_state(config_path);
    if let Some(dir) = &coordinated {
        // A key rotation cut short by a crash is finished before the key is read.
        control::rotate::recover(dir).context("finishing an interrupted key rotation")?;
    }
    let secret = read_private_key(&config.private_key_file)?;
    let threads = config
        .threads
        .map(|t| t.get())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let settings = dataplane::Settings {
        config,
        config_path: config_path.to_path_buf(),
        secret,
        feed: None,
        rotator: None,
    };
    // Coordinator mode when `segmesh-node join` wrote this config.
    match coordinated {
        Some(dir) => rt.block_on(control::cli::run_coordinated(dir, settings)),
        None => rt.block_on(dataplane::run(settings)),
    }
}

/// The control socket: `--socket`, else the one `--config` names, else
/// the default for interface segmesh0.
fn socket_path(config: Option<&Path>, socket: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => {
            let cfg = NodeConfig::load(c)?;
            cfg.control_socket
                .unwrap_or_else(|| ctlsock::default_path(cfg.interface.as_str()))
        }
        (None, None) => ctlsock::default_path("segmesh0"),
    })
}

fn status(config: Option<&Path>, socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let st = ctlsock::fetch_status(&socket_path(config, socket)?)?;
    status_fmt::print_status(&st, json);
    Ok(())
}

fn rotate_key(config: Option<&Path>, socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let path = socket_path(config, socket)?;
    let r = ctlsock::rotate_key(&path).context("rotating the WireGuard key")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "WireGuard key rotated: {} -> {}; new key applied by {}/{} peers in {} ms (netmap version {})",
            r.old_key, r.new_key, r.peers_acked, r.peers_total, r.peers_ms, r.netmap_version
        );
    }
    Ok(())
}

/// Runs the command line; the error chain is printed once by `main`.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { out } => {
            println!("{}", keygen(&out)?);
        }
        Command::Pubkey => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            println!("{}", public_of(parse_private_key(&text)?));
        }
        Command::Join(args) => control::cli::join_command(args)?,
        Command::Run { config } => {
            init_logging();
            run(&config)?;
        }
        Command::Status {
            config,
            socket,
            json,
        } => status(config.as_deref(), socket, json)?,
        Command::RotateKey {
            config,
            socket,
            json,
        } => rotate_key(config.as_deref(), socket, json)?,
        Command::Docs(docs) => docs.run(<Cli as clap::CommandFactory>::command())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_pubkey_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let public = keygen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(public_of(read_private_key(&path).unwrap()), public);
        // Never overwritten.
        let err = keygen(&path).unwrap_err();
        assert!(format!("{err:#}").contains("never overwritten"), "{err:#}");
        // Loose permissions are refused with the fix in the message.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", read_private_key(&path).unwrap_err());
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn pubkey_matches_wg() {
        // A known pair from `wg genkey | tee /dev/stderr | wg pubkey`.
        let sk = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        let pk = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
        assert_eq!(public_of(parse_private_key(sk).unwrap()).to_string(), pk);
        assert!(parse_private_key("AAAA").is_err());
        assert!(parse_private_key("not base64!").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c =
            Cli::try_parse_from(["segmesh-node", "status", "--socket", "/x", "--json"]).unwrap();
        assert!(matches!(c.command, Command::Status { json: true, .. }));
    }
}
