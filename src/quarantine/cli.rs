//! `stormbreaker quarantine ...`

use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List held messages.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_config: &Config, _command: Command) -> anyhow::Result<i32> {
    anyhow::bail!("not yet implemented")
}
