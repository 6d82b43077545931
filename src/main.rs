//! The `stormbreaker` binary: a thin layer over the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use stormbreaker::config::Config;

#[derive(Parser)]
#[command(
    name = "stormbreaker",
    version,
    about = "SMTP reply-all storm circuit breaker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SMTP proxy and/or milter described by the policy file.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a policy file: exit 0, or exit 2 naming the file, line and key at fault.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Replay an Atos-shaped reply-all storm through the proxy and a built-in sink (no MTA).
    Demo,
    /// Inspect, release and delete held messages.
    Quarantine {
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        command: stormbreaker::quarantine::cli::Command,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("stormbreaker: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            stormbreaker::logging::init(&config.log);
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(stormbreaker::service::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stormbreaker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(stormbreaker::demo::run()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stormbreaker demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Quarantine { config, command } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match stormbreaker::quarantine::cli::run(&config, command) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("stormbreaker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
