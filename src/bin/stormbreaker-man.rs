//! Writes the man pages of `stormbreaker` and each of its subcommands (`stormbreaker.1`,
//! `stormbreaker-run.1`, `stormbreaker-quarantine-release.1`, ...) into a folder, from the
//! same command-line definition the binary parses. Run by `packaging/build-deb.sh`, not by
//! every `cargo build`: `cargo run --bin stormbreaker-man -- OUTDIR`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: stormbreaker-man OUTDIR");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| clap_mangen::generate_to(stormbreaker::cli::command(), &dir));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stormbreaker-man: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
