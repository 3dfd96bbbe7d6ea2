//! segmeshctl: the admin CLI's command tree (clap derive) and dispatch.
//!
//! Noun-verb groups. `policy` holds the offline commands that work on files
//! (a policy and an inventory); groups that talk to a coordinator are added
//! beside it. Every listing takes `--json`, printing the same structure the
//! table is made from. Exit codes: 0 success, 1 failure (invalid input,
//! failed tests, audit findings, unreadable files), 2 usage error.

pub mod output;
pub mod policy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// segmesh admin CLI.
#[derive(Debug, Parser)]
#[command(name = "segmeshctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with policy files: check, test, compile, explain, diff, audit, draw.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(cmd) => policy::run(cmd),
    }
}
