//! Shell completions and man pages, generated from a binary's clap
//! definition so they can never drift from the real flags. Every segmesh
//! binary flattens [`DocsCommand`] into its subcommands:
//! `segmeshctl completions bash`, `segmesh-node man --out DIR` (hidden: it
//! is for packagers, see docs/operations.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The subcommands every segmesh binary has.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DocsCommand {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write man pages (section 1) for the binary and each subcommand.
    #[command(hide = true)]
    Man {
        /// Directory to write NAME.1, NAME-SUBCOMMAND.1, ... into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

impl DocsCommand {
    /// Runs the command for the binary whose definition is `cmd`.
    pub fn run(&self, cmd: clap::Command) -> std::io::Result<()> {
        match self {
            DocsCommand::Completions { shell } => {
                let mut stdout = std::io::stdout().lock();
                completions(cmd, *shell, &mut stdout);
                stdout.flush()
            }
            DocsCommand::Man { out } => {
                let mut stdout = std::io::stdout().lock();
                for page in man_pages(cmd, out)? {
                    writeln!(stdout, "{}", page.display())?;
                }
                stdout.flush()
            }
        }
    }
}

/// Writes the completion script of `cmd` for `shell`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes one man page per command and visible subcommand (`segmeshctl.1`,
/// `segmeshctl-policy.1`, `segmeshctl-policy-apply.1`, ...) into `dir`;
/// returns the pages in `dir`.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}
