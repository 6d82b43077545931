#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run runs it. Installs the real peers the
# tests talk to (Postfix, Redis (also run as a Cluster, a Sentinel set and a TLS server),
# swaks, openssl for a test certificate, slapd and ldap-utils for the LDAP list sources,
# Chromium and Python's playwright and prometheus_client for the console and metrics tests,
# cargo-deb, systemd-analyze and logrotate for the package test) when they are missing, then
# runs formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v postfix >/dev/null || need+=(postfix)
command -v smtp-sink >/dev/null || need+=(postfix)
command -v redis-server >/dev/null || need+=(redis-server)
# redis-cli builds the test Redis Cluster (--cluster create) and talks TLS to the TLS server;
# sentinels run as `redis-server --sentinel`, so redis-sentinel itself is not needed.
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v swaks >/dev/null || need+=(swaks)
command -v openssl >/dev/null || need+=(openssl)
# The console test drives Debian's Chromium by its path (never a browser Playwright downloads).
[ -x /usr/bin/chromium ] || need+=(chromium)
# LDAP list sources are tested against a private slapd, filled with ldapadd.
command -v slapd >/dev/null || need+=(slapd)
command -v ldapadd >/dev/null || need+=(ldap-utils)
# The package test: systemd-analyze judges the unit, logrotate runs the package's file, dpkg-deb
# and setpriv (util-linux) are in every Debian.
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v logrotate >/dev/null || need+=(logrotate)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: missing ${need[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "installing ${need[*]}"
  apt-get update -q
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi

# Python packages: Playwright (the library only; `playwright install` is never run) and
# prometheus_client (its text parser reads /metrics as Prometheus does).
pip_need=()
python3 -c "import playwright" 2>/dev/null || pip_need+=(playwright)
python3 -c "import prometheus_client" 2>/dev/null || pip_need+=(prometheus_client)
if [ ${#pip_need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: missing Python packages ${pip_need[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "installing ${pip_need[*]} (pip)"
  python3 -m pip install -q "${pip_need[@]}"
fi

# cargo-deb builds the .deb (packaging/build-deb.sh, tests/it/package.rs): from crates.io when
# missing, once (about a minute).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (cargo install)"
  cargo install cargo-deb --locked --quiet --version '^3.8'
fi

# The other real MTAs (Exim, Sendmail, Postfix with SASL; scripts/peers/README.md): installed or
# unpacked when missing, which needs root; under half a second when all is there.
if [ "$(id -u)" = 0 ]; then
  scripts/peers/install.sh
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
