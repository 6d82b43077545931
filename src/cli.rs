//! The command line, as clap sees it: the `stormbreaker` binary parses it, and
//! `stormbreaker-man` renders the man pages from the same definition, so the two cannot drift.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Where the policy file is when `--config` is not given (and `STORMBREAKER_CONFIG` not set):
/// the path the package installs it at and the systemd unit starts with.
pub const DEFAULT_CONFIG: &str = "/etc/stormbreaker/stormbreaker.toml";

/// The environment variable that names another default policy file.
pub const CONFIG_ENV: &str = "STORMBREAKER_CONFIG";

const FILES: &str = "\
Files:
  /etc/stormbreaker/stormbreaker.toml          the policy file (--config, STORMBREAKER_CONFIG)
  /var/spool/stormbreaker/quarantine/          held messages ([quarantine] dir)
  /var/spool/stormbreaker/quarantine/audit.log one JSON line per hold, release, delete, trip
  /run/stormbreaker/                           the milter's unix socket, if configured
  /usr/lib/systemd/system/stormbreaker.service the unit: `systemctl reload stormbreaker` is SIGHUP

Signals (to `run`): SIGHUP reads the policy file again (a file that does not validate is logged
and the running configuration stays); SIGTERM and SIGINT stop accepting and let transactions in
flight finish for [proxy] shutdown_grace. Under systemd (Type=notify) it reports READY=1 once
every listener is bound, RELOADING=1/READY=1 around a reload, and STOPPING=1.";

#[derive(Parser)]
#[command(
    name = "stormbreaker",
    version,
    about = "SMTP reply-all storm circuit breaker",
    long_about = "SMTP reply-all storm circuit breaker: an SMTP proxy in front of the MTA (or a \
                  milter inside Postfix or Sendmail) that counts wide replies per thread and, \
                  when a reply-all cascade starts, holds, rejects or defers further replies.",
    after_long_help = FILES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--config FILE`, defaulting to `STORMBREAKER_CONFIG`, then to [`DEFAULT_CONFIG`].
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// The policy file.
    #[arg(
        long = "config",
        value_name = "FILE",
        env = CONFIG_ENV,
        default_value = DEFAULT_CONFIG,
        global = true
    )]
    pub path: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the SMTP proxy and/or milter described by the policy file.
    ///
    /// Started as root with [service] user set, it binds every listener, then switches to that
    /// user and group for good before it reads or writes anything else; started as that user
    /// already (systemd's User=), it runs as it is.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate a policy file and what it names (lists file, quarantine folder, certificates,
    /// socket folders): exit 0, or exit 2 naming the file, line and key at fault.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The effective configuration, every default filled in (like `postconf`).
    Config {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// See, trip or reset breakers in a running stormbreaker (through `[admin] listen`, with
    /// the token of `[admin] token_file` named like the user running it, else the first).
    Breaker {
        #[command(flatten)]
        config: ConfigArg,
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
        /// The policy whose thresholds and lists are replayed.
        #[command(flatten)]
        config: ConfigArg,
        /// The whole report, every message's decision included, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, release and delete held messages.
    ///
    /// Run as root, these commands act as the owner of the quarantine folder (the service's
    /// user), so that what they write there stays the service's.
    Quarantine {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: crate::quarantine::cli::Command,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML.
    Dump,
}

#[derive(Subcommand)]
pub enum BreakerCommand {
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

/// The clap command, for the man pages.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn config_defaults_to_the_installed_path_and_goes_before_or_after_a_subcommand() {
        // The variable would replace the default; no test sets it (that would race).
        if std::env::var_os(CONFIG_ENV).is_some() {
            return;
        }
        let cli = Cli::try_parse_from(["stormbreaker", "quarantine", "list"]).unwrap();
        let Command::Quarantine { config, .. } = cli.command else {
            panic!("quarantine")
        };
        assert_eq!(config.path, PathBuf::from(DEFAULT_CONFIG));
        for args in [
            ["stormbreaker", "quarantine", "--config", "/x.toml", "list"],
            ["stormbreaker", "quarantine", "list", "--config", "/x.toml"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Quarantine { config, .. } = cli.command else {
                panic!("quarantine")
            };
            assert_eq!(config.path, PathBuf::from("/x.toml"), "{args:?}");
        }
    }
}
