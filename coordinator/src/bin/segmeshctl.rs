//! segmeshctl: the segmesh admin CLI. The command tree and all logic live in
//! `segmesh_coordinator::ctl`; this only parses, runs, and maps errors to
//! exit codes (clap exits with 2 on usage errors by itself).

use std::process::ExitCode;

use clap::Parser as _;
use segmesh_coordinator::ctl::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
