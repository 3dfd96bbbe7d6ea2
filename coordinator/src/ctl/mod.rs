//! segmeshctl: the admin CLI's command tree (clap derive) and dispatch.
//!
//! Noun-verb groups. `policy` holds the offline commands that work on files
//! (a policy and an inventory); groups that talk to a coordinator are added
//! beside it. Every listing takes `--json`, printing the same structure the
//! table is made from. Exit codes: 0 success, 1 failure (invalid input,
//! failed tests, audit findings, unreadable files), 2 usage error.

pub mod live;
pub mod live_policy;
pub mod nodes;
pub mod output;
pub mod policy;
pub mod tokens;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// segmesh admin CLI.
#[derive(Debug, Parser)]
#[command(name = "segmeshctl", version, about, propagate_version = true)]
pub struct Cli {
    /// How to reach a live coordinator (used by live commands only).
    #[command(flatten)]
    pub conn: live::ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with policy files: check, test, compile, explain, diff, audit, draw.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Join tokens on the live coordinator: create, list, revoke.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Enrolled nodes: list, label, revoke.
    #[command(subcommand)]
    Nodes(nodes::NodesCommand),
    /// Who changed what, when.
    AuditLog {
        /// Show the newest N entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Docs(segmesh_config::cli_docs::DocsCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(cmd) => policy::run(cmd, &cli.conn),
        Command::Tokens(cmd) => tokens::run(&cli.conn, cmd).map(|()| ExitCode::SUCCESS),
        Command::Nodes(cmd) => nodes::run(&cli.conn, cmd).map(|()| ExitCode::SUCCESS),
        Command::AuditLog { limit, json } => {
            nodes::audit_log(&cli.conn, limit, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Docs(docs) => {
            docs.run(<Cli as clap::CommandFactory>::command())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
