//! `segmesh-coordinator serve --config coordinator.toml`,
//! `segmesh-coordinator migrate-store --from sqlite://… --to postgres://…`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use segmesh_coordinator::api;
use segmesh_coordinator::clock::SystemClock;
use segmesh_coordinator::config::CoordinatorConfig;
use segmesh_coordinator::server::prepare;
use segmesh_coordinator::store::{self, StoreLocation};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "segmesh-coordinator",
    version,
    about = "segmesh coordinator: identities, policy, netmap distribution"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTPS API (enrollment, netmap streams, admin API, metrics).
    Serve {
        /// Configuration file.
        #[arg(
            long,
            env = "SEGMESH_COORDINATOR_CONFIG",
            default_value = "/etc/segmesh/coordinator.toml"
        )]
        config: PathBuf,
    },
    /// Copy a SQLite deployment's state into an empty PostgreSQL database
    /// (ids and versions kept). Stop the coordinator first; the source is
    /// only read. Then set `store = "postgres://…"` in coordinator.toml.
    MigrateStore {
        /// The SQLite database, e.g. sqlite:///var/lib/segmesh-coordinator/state.db
        #[arg(long)]
        from: StoreLocation,
        /// The PostgreSQL database, e.g. postgres://segmesh@db.example/segmesh
        #[arg(long)]
        to: StoreLocation,
        /// Print the copied row counts as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Docs(segmesh_config::cli_docs::DocsCommand),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEGMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => run(config),
        Command::MigrateStore { from, to, json } => migrate_store(&from, &to, json),
        Command::Docs(docs) => docs
            .run(<Cli as clap::CommandFactory>::command())
            .map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run(config: PathBuf) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(&config)?;
    let prepared = prepare(&cfg, Arc::new(SystemClock))
        .await
        .context("starting the coordinator")?;
    if prepared.ca_created {
        tracing::info!(data_dir = %cfg.data_dir.display(), "created a new CA");
    }
    if let Some(path) = &prepared.admin_token_created {
        // Printed once, on first start; the coordinator keeps only its hash.
        println!(
            "admin token written to {} (0600). Point segmeshctl at it with SEGMESH_ADMIN_TOKEN_FILE; the coordinator only keeps its hash.",
            path.display()
        );
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        ca_sha256 = %prepared.ctx.ca.fingerprint(),
        "coordinator serving"
    );
    let router = api::router(Arc::clone(&prepared.ctx));
    api::run(listener, prepared.tls, router, shutdown_signal()).await;
    tracing::info!("coordinator stopped");
    Ok(())
}

#[tokio::main]
async fn migrate_store(from: &StoreLocation, to: &StoreLocation, json: bool) -> anyhow::Result<()> {
    let report = store::migrate::between(from, to)
        .await
        .with_context(|| format!("migrating {from} to {to}"))?;
    tracing::info!(from = %from, to = %to, "store migrated");
    if json {
        let counts: serde_json::Map<String, serde_json::Value> = report
            .iter()
            .map(|(t, n)| ((*t).to_string(), (*n).into()))
            .collect();
        println!("{}", serde_json::Value::Object(counts));
    } else {
        for (table, rows) in &report {
            println!("{table:<10} {rows} row(s)");
        }
        println!("copied {from} to {to}; set store = \"{to}\" in coordinator.toml");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
