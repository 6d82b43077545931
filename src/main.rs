//! The `stormbreaker` binary: a thin layer over the library.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
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
    /// Validate a policy file and what it names (lists file, quarantine folder, certificates,
    /// socket folders): exit 0, or exit 2 naming the file, line and key at fault.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// The effective configuration, every default filled in (like `postconf`).
    Config {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// See, trip or reset breakers in a running stormbreaker (through `[admin] listen`, with
    /// the token of `[admin] token_file` named like the user running it, else the first).
    Breaker {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: BreakerCommand,
    },
    /// Replay an Atos-shaped reply-all storm through the proxy and a built-in sink (no MTA).
    Demo,
    /// Run the policy over past mail (an mbox or a Maildir) in arrival order: which storms
    /// would have tripped, when, what would have been held, the deliveries avoided. Nothing is
    /// sent, held or shared: the breakers live in this process only.
    Replay {
        /// An mbox file.
        #[arg(long, conflicts_with = "maildir", required_unless_present = "maildir")]
        mbox: Option<PathBuf>,
        /// A Maildir folder (with cur/ and new/).
        #[arg(long)]
        maildir: Option<PathBuf>,
        /// The policy file whose thresholds and lists are replayed.
        #[arg(long)]
        config: PathBuf,
        /// The whole report, every message's decision included, as JSON.
        #[arg(long)]
        json: bool,
    },
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
enum ConfigCommand {
    /// Print the effective configuration as TOML.
    Dump,
}

#[derive(Subcommand)]
enum BreakerCommand {
    /// Breakers open now, as JSON: each storm's id (the key that started it), its other keys,
    /// rule, phase, times and counts.
    List,
    /// Open a storm's breaker by hand; a key no message has had yet starts one, so a thread can
    /// be stopped before it storms. KEY: 'subj:Quarterly results' (reply prefixes are
    /// stripped), mid:budget-2027@corp.test (a Message-ID, brackets optional), tidx:GUID (32 hex
    /// digits of an Outlook Thread-Index), wave:all@corp.test, or a storm id from `list`.
    /// Anything else is refused (exit 2).
    Trip { key: String },
    /// Close the breaker of the storm KEY belongs to (its id or any of its keys) and forget its
    /// counts: every hold of the storm stops. A key no storm has is refused (exit 2).
    Reset { key: String },
}

fn breaker(config: &Config, command: BreakerCommand) -> anyhow::Result<ExitCode> {
    let client = stormbreaker::admin::client::AdminClient::from_config(config)?;
    let encode = stormbreaker::admin::client::encode;
    let (method, path) = match &command {
        BreakerCommand::List => ("GET", "/breakers".to_string()),
        BreakerCommand::Trip { key } => ("POST", format!("/breakers/trip?key={}", encode(key))),
        BreakerCommand::Reset { key } => ("POST", format!("/breakers/reset?key={}", encode(key))),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let (status, body) = runtime.block_on(client.request(method, &path))?;
    Ok(match status {
        200 => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        // A key that is not one, or that no storm has: the administrator's mistake.
        400 | 404 => {
            eprint!("stormbreaker breaker: {}", error_text(&body));
            ExitCode::from(2)
        }
        _ => {
            eprint!("stormbreaker breaker: {}", error_text(&body));
            ExitCode::FAILURE
        }
    })
}

fn replay(
    config: &Config,
    mailbox: &stormbreaker::replay::Mailbox,
    json: bool,
) -> anyhow::Result<()> {
    let report = runtime().block_on(stormbreaker::replay::run(config, mailbox))?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        std::io::Write::write_all(&mut out, b"\n")?;
    } else {
        stormbreaker::replay::print_text(&report, &mut out)?;
    }
    Ok(())
}

/// The `error` of the admin API's JSON answer, or the answer itself.
fn error_text(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    format!("{text}\n")
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("stormbreaker: {e}");
        ExitCode::from(2)
    })
}

/// For the commands whose `--config` may stand before or after their subcommand.
fn load_required(path: Option<&Path>, command: &str) -> Result<Config, ExitCode> {
    match path {
        Some(path) => load(path),
        None => {
            eprintln!("stormbreaker {command}: --config FILE is required");
            Err(ExitCode::from(2))
        }
    }
}

/// Runs an async command to its end; errors are printed with their causes. A closed pipe
/// (`quarantine list | head`) is not an error.
fn finish<T>(
    command: &str,
    result: anyhow::Result<T>,
    code: impl FnOnce(T) -> ExitCode,
) -> ExitCode {
    match result {
        Ok(v) => code(v),
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stormbreaker {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|io| io.kind()) == pipe
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|json| json.io_error_kind())
                == pipe
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config: path } => match load(&path) {
            Ok(config) => match config.check_files(&path) {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("stormbreaker: {e}");
                    ExitCode::from(2)
                }
            },
            Err(code) => code,
        },
        Command::Config { config, command } => match load_required(config.as_deref(), "config") {
            Ok(config) => match command {
                ConfigCommand::Dump => {
                    print!("{}", config.dump());
                    ExitCode::SUCCESS
                }
            },
            Err(code) => code,
        },
        Command::Run { config: path } => match load(&path).and_then(|c| {
            c.check_files(&path).map(|()| c).map_err(|e| {
                eprintln!("stormbreaker: {e}");
                ExitCode::from(2)
            })
        }) {
            Ok(config) => {
                if let Err(e) = stormbreaker::logging::init(&config.log) {
                    eprintln!("stormbreaker: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
                let result = runtime().block_on(stormbreaker::service::run(config, &path));
                finish("run", result, |()| ExitCode::SUCCESS)
            }
            Err(code) => code,
        },
        Command::Breaker { config, command } => match load_required(config.as_deref(), "breaker") {
            Ok(config) => finish("breaker", breaker(&config, command), |code| code),
            Err(code) => code,
        },
        Command::Replay {
            mbox,
            maildir,
            config,
            json,
        } => match load(&config) {
            Ok(config) => {
                let mailbox = match (mbox, maildir) {
                    (Some(path), _) => stormbreaker::replay::Mailbox::Mbox(path),
                    (None, Some(path)) => stormbreaker::replay::Mailbox::Maildir(path),
                    (None, None) => unreachable!("clap requires --mbox or --maildir"),
                };
                finish("replay", replay(&config, &mailbox, json), |()| {
                    ExitCode::SUCCESS
                })
            }
            Err(code) => code,
        },
        Command::Demo => finish(
            "demo",
            runtime().block_on(stormbreaker::demo::run()),
            |()| ExitCode::SUCCESS,
        ),
        Command::Quarantine { config, command } => {
            match load_required(config.as_deref(), "quarantine") {
                Ok(config) => finish(
                    "quarantine",
                    stormbreaker::quarantine::cli::run(&config, command),
                    |code| ExitCode::from(code as u8),
                ),
                Err(code) => code,
            }
        }
    }
}
