//! The `stormbreaker` binary: a thin layer over the library.

use clap::Parser;
use std::path::Path;
use std::process::ExitCode;
use stormbreaker::cli::{BreakerCommand, Cli, Command, ConfigArg, ConfigCommand};
use stormbreaker::config::Config;

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
        if path == Path::new(stormbreaker::cli::DEFAULT_CONFIG) && !path.exists() {
            eprintln!(
                "stormbreaker: that is the default policy file; name another with --config FILE \
                 or {}",
                stormbreaker::cli::CONFIG_ENV
            );
        }
        ExitCode::from(2)
    })
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

/// `quarantine` commands run by root act as the quarantine folder's owner (the service's
/// user): held messages they move or create stay writable by the service.
fn quarantine(config: &Config, command: stormbreaker::quarantine::cli::Command) -> ExitCode {
    if let Err(e) = stormbreaker::service::privileges::become_owner_of(&config.quarantine.dir) {
        eprintln!("stormbreaker quarantine: {e}");
        return ExitCode::FAILURE;
    }
    finish(
        "quarantine",
        stormbreaker::quarantine::cli::run(config, command),
        |code| ExitCode::from(code as u8),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig {
            config: ConfigArg { path },
        } => match load(&path) {
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
        Command::Config { config, command } => match load(&config.path) {
            Ok(config) => match command {
                ConfigCommand::Dump => {
                    print!("{}", config.dump());
                    ExitCode::SUCCESS
                }
            },
            Err(code) => code,
        },
        Command::Run {
            config: ConfigArg { path },
        } => match load(&path).and_then(|c| {
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
        Command::Breaker { config, command } => match load(&config.path) {
            Ok(config) => finish("breaker", breaker(&config, command), |code| code),
            Err(code) => code,
        },
        Command::Replay {
            mbox,
            maildir,
            config,
            json,
        } => match load(&config.path) {
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
        Command::Quarantine { config, command } => match load(&config.path) {
            Ok(config) => quarantine(&config, command),
            Err(code) => code,
        },
    }
}
