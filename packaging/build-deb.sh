#!/usr/bin/env bash
# Builds the Debian package: target/debian/stormbreaker_VERSION-1_ARCH.deb (README.md, "Install").
#
#   packaging/build-deb.sh                     release build, then the .deb
#   packaging/build-deb.sh --profile dev --no-build --output DIR --fast
#                                              the binaries cargo test built (tests/it/package.rs)
#
# Steps: build the stormbreaker and stormbreaker-man binaries, write the man pages from the
# command-line definition into the build's output folder (man/*.1.gz), then cargo-deb, which
# takes the assets, unit and maintainer scripts named in Cargo.toml [package.metadata.deb].
# cargo-deb is installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=yes
deb_args=()
while [ $# -gt 0 ]; do
    case $1 in
    --profile) profile=$2; shift 2 ;;
    --no-build) build=no; shift ;;
    --output) deb_args+=(--output "$2"); shift 2 ;;
    --fast) deb_args+=(--fast); shift ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! cargo deb --version >/dev/null 2>&1; then
    # 3.x: it packages the dev profile's binaries (the tests' build) with a warning, where a
    # later major version may refuse.
    echo "build-deb.sh: installing cargo-deb" >&2
    cargo install cargo-deb --locked --quiet --version '^3.8'
fi

if [ "$build" = yes ]; then
    cargo build --locked --profile "$profile" --bin stormbreaker --bin stormbreaker-man
fi
# Cargo's folder for a profile: dev builds land in debug/.
case $profile in
dev | test) out_dir=debug ;;
bench) out_dir=release ;;
*) out_dir=$profile ;;
esac
out="${CARGO_TARGET_DIR:-target}/$out_dir"

# Written afresh each time: a page of a removed subcommand must not linger in the package.
rm -rf "$out/man"
"$out/stormbreaker-man" "$out/man"
# Debian installs man pages compressed; -n leaves out the time stamp (same input, same bytes).
gzip -9n "$out/man"/*.1

cargo deb --no-build --locked --profile "$profile" "${deb_args[@]}"
