//! `segmeshctl policy ...`: offline commands over a policy file and an
//! inventory file. They compile locally with the same code the coordinator
//! runs, so what they print is what the mesh would get.

mod files;
mod inspect;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::live::ConnArgs;
use super::live_policy;

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The inventory flag shared by most commands.
#[derive(Debug, Clone, Args)]
pub struct InventoryArg {
    /// Inventory file (TOML, `[[node]]` tables).
    #[arg(
        long = "inventory",
        short = 'i',
        env = "SEGMESH_INVENTORY",
        value_name = "INV"
    )]
    pub path: PathBuf,
}

/// The optional form, for commands that work without nodes too.
#[derive(Debug, Clone, Args)]
pub struct MaybeInventoryArg {
    /// Inventory file (TOML, `[[node]]` tables).
    #[arg(
        long = "inventory",
        short = 'i',
        env = "SEGMESH_INVENTORY",
        value_name = "INV"
    )]
    pub path: Option<PathBuf>,
}

/// Offline policy commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file; print every error as FILE:LINE:COL.
    Check {
        file: PathBuf,
        /// Also check that tests name nodes of this inventory.
        #[command(flatten)]
        inventory: MaybeInventoryArg,
        #[arg(long)]
        json: bool,
    },
    /// Run the policy's [[test]] cases; exit 1 if any fails.
    Test {
        file: PathBuf,
        #[command(flatten)]
        inventory: MaybeInventoryArg,
        #[arg(long)]
        json: bool,
    },
    /// Compile and show one node's netmap (or write every node's).
    Netmap {
        file: PathBuf,
        #[command(flatten)]
        inventory: InventoryArg,
        /// The node whose netmap to show.
        #[arg(long, required_unless_present = "out_dir", conflicts_with = "out_dir")]
        node: Option<String>,
        /// Write every node's netmap to DIR/NAME.json instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Print the netmap JSON (the wire format) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Say whether a flow is allowed, and which rules decided it.
    /// Without FILE: against the live coordinator's inventory and policy.
    Explain {
        file: Option<PathBuf>,
        #[command(flatten)]
        inventory: MaybeInventoryArg,
        /// A node name, or labels as key=value,key=value.
        #[arg(long)]
        from: String,
        /// A node name, or labels as key=value,key=value.
        #[arg(long)]
        to: String,
        /// One flow: tcp/5432, udp/53, icmp, ...
        #[arg(long)]
        port: String,
        #[arg(long)]
        json: bool,
    },
    /// Paths added and removed between two policies.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[command(flatten)]
        inventory: InventoryArg,
        #[arg(long)]
        json: bool,
    },
    /// Check that netmap files hold exactly what the policy allows.
    /// Without FILE: compare every node's last acked netmap on the live
    /// coordinator with its policy.
    Audit {
        file: Option<PathBuf>,
        #[command(flatten)]
        inventory: MaybeInventoryArg,
        /// Directory of netmap JSON files (one per node).
        #[arg(long, value_name = "DIR", requires = "file")]
        netmaps: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Apply a policy on the live coordinator: its [[test]] cases run against
    /// the live inventory first (refused on failure); prints the diff.
    Apply {
        file: PathBuf,
        /// Show the tests and the diff only.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Draw segments and allowed edges as DOT or a self-contained SVG.
    Graph {
        file: PathBuf,
        #[command(flatten)]
        inventory: MaybeInventoryArg,
        #[arg(long, value_enum, default_value_t = GraphFormat::Svg)]
        format: GraphFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Output formats of `policy graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Svg,
    /// The graph model (boxes and edges) as JSON.
    Json,
}

/// Runs one policy command.
pub fn run(cmd: PolicyCommand, conn: &ConnArgs) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check {
            file,
            inventory,
            json,
        } => inspect::check(&file, inventory.path.as_deref(), json),
        PolicyCommand::Test {
            file,
            inventory,
            json,
        } => inspect::test(&file, inventory.path.as_deref(), json),
        PolicyCommand::Netmap {
            file,
            inventory,
            node,
            out_dir,
            json,
        } => files::netmap(
            &file,
            &inventory.path,
            node.as_deref(),
            out_dir.as_deref(),
            json,
        ),
        PolicyCommand::Explain {
            file,
            inventory,
            from,
            to,
            port,
            json,
        } => match file {
            Some(file) => {
                inspect::explain(&file, inventory.path.as_deref(), &from, &to, &port, json)
            }
            None => live_policy::explain(conn, &from, &to, &port, json).map(|_| ExitCode::SUCCESS),
        },
        PolicyCommand::Diff {
            old,
            new,
            inventory,
            json,
        } => files::diff(&old, &new, &inventory.path, json),
        PolicyCommand::Audit {
            file,
            inventory,
            netmaps,
            json,
        } => match (file, inventory.path, netmaps) {
            (Some(file), Some(inv), Some(netmaps)) => files::audit(&file, &inv, &netmaps, json),
            (Some(_), _, _) => anyhow::bail!("an offline audit needs --inventory and --netmaps"),
            (None, _, _) => live_policy::audit(conn, json).map(exit_code),
        },
        PolicyCommand::Apply {
            file,
            dry_run,
            json,
        } => live_policy::apply(conn, &file, dry_run, json).map(exit_code),
        PolicyCommand::Graph {
            file,
            inventory,
            format,
            output,
        } => files::graph(&file, inventory.path.as_deref(), format, output.as_deref()),
    }
}
