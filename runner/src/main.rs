//! The `cogward-runner` command line. See the library's documentation for what `exec` does.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cogward_runner::{exit_code, run};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "cogward-runner",
    version,
    about = "One ephemeral sandbox per agent run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent described by DIR/request.json in a fresh sandbox, at most once, and
    /// record everything in DIR (see the protocol: events.jsonl, result.json, ...).
    ///
    /// Exit codes: 0 result written (whatever the agent's own code), 65 bad request,
    /// 70 runner error, 71 sandbox failed (result written), 75 run directory locked by another
    /// process, 76 agent already started by an earlier runner (never started again).
    Exec {
        /// The run directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Our own session: the runner outlives the worker that started it and is in none of its
    // process groups. (Done here rather than by the parent, so the parent can posix_spawn us
    // instead of forking its whole process.) Fails only if we already lead a session.
    let _ = nix::unistd::setsid();
    match cli.command {
        Command::Exec { dir } => match run::exec(&dir) {
            Ok(_) => ExitCode::from(exit_code::OK),
            Err(e) => {
                let code = e.exit_code();
                let err = Err::<(), _>(e)
                    .with_context(|| format!("cogward-runner exec --dir {}", dir.display()));
                if let Err(err) = err {
                    eprintln!("{err:#}");
                }
                ExitCode::from(code)
            }
        },
    }
}
