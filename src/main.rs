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
    /// See, trip or reset breakers in a running stormbreaker (through `[admin] listen`).
    Breaker {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: BreakerCommand,
    },
    /// Replay an Atos-shaped reply-all storm through the proxy and a built-in sink (no MTA).
    Demo,
    /// Inspect, release and delete held messages.
    Quarantine {
        /// The policy file (before or after the subcommand).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: stormbreaker::quarantine::cli::Command,
    },
}

#[derive(Subcommand)]
enum BreakerCommand {
    /// Breakers open now, as JSON.
    List,
    /// Open a thread's breaker by hand, e.g. `subj:quarterly results` or `ref:<id@host>`.
    Trip { key: String },
    /// Close a thread's breaker and forget its counts.
    Reset { key: String },
}

fn breaker(config: &Config, command: BreakerCommand) -> anyhow::Result<ExitCode> {
    let Some(addr) = config.admin.listen else {
        anyhow::bail!(
            "[admin] listen is not set in the policy file: the breaker commands talk to it"
        );
    };
    let (method, path) = match &command {
        BreakerCommand::List => ("GET", "/breakers".to_string()),
        BreakerCommand::Trip { key } => (
            "POST",
            format!(
                "/breakers/trip?key={}",
                stormbreaker::admin::client::encode(key)
            ),
        ),
        BreakerCommand::Reset { key } => (
            "POST",
            format!(
                "/breakers/reset?key={}",
                stormbreaker::admin::client::encode(key)
            ),
        ),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let (status, body) =
        runtime.block_on(stormbreaker::admin::client::request(addr, method, &path))?;
    print!("{body}");
    Ok(if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
        Command::Run { config: path } => {
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            stormbreaker::logging::init(&config.log);
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(stormbreaker::service::run(config, &path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stormbreaker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Breaker { config, command } => {
            let Some(config) = config else {
                eprintln!("stormbreaker breaker: --config FILE is required");
                return ExitCode::from(2);
            };
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            breaker(&config, command).unwrap_or_else(|e| {
                eprintln!("stormbreaker breaker: {e:#}");
                ExitCode::FAILURE
            })
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
            let Some(config) = config else {
                eprintln!("stormbreaker quarantine: --config FILE is required");
                return ExitCode::from(2);
            };
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
