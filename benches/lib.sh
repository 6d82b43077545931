# Shared by the bench scripts (sourced): Postfix's tools, free ports, private Postfix instances.
# Needs root: apt-get, Postfix, smtp-sink -u.

export PATH=$PATH:/usr/sbin

# Installs Postfix (postfix, smtp-source, smtp-sink, postqueue) when any of it is missing.
need_postfix() {
    local tool
    for tool in postfix smtp-source smtp-sink postqueue; do
        command -v "$tool" >/dev/null && continue
        echo "installing postfix..." >&2
        apt-get update -q >/dev/null
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
        return
    done
}

# Installs or unpacks the other real MTAs (Exim, Sendmail, Postfix with SASL) when missing; their
# start/stop scripts are in scripts/peers/ (README.md there).
need_peers() {
    "$(dirname "${BASH_SOURCE[0]}")/../scripts/peers/install.sh" >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT [WHAT] [LOG]: waits up to 15 s for a listener, else names it, shows LOG, exits.
wait_port() {
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1${2:+ ($2)}" >&2
    [ -n "${3:-}" ] && tail -20 "$3" >&2
    exit 1
}

# The main.cf template the integration tests fill in too (tests/it/support/postfix.rs), and the
# milter lines they add: one file each, so the benches' Postfix and the tests' cannot drift.
SB_POSTFIX_TEMPLATES="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/it/support" && pwd)"

# start_postfix DIR PORT RELAY_PORT [MAIN_CF_LINES]: a private instance in DIR (conf, queue,
# data, maillog) listening on 127.0.0.1:PORT and relaying everything to 127.0.0.1:RELAY_PORT.
# DIR must be under /var (maillog_file) and traversable by the postfix user.
start_postfix() {
    local d=$1
    mkdir -p "$d/conf" "$d/queue" "$d/data"
    chown postfix:postfix "$d/data"
    sed -e "s|@DIR@|$d|g" -e "s|@RELAY_PORT@|$3|g" "$SB_POSTFIX_TEMPLATES/postfix-main.cf" >"$d/conf/main.cf"
    printf '%s\n' "${4:-}" >>"$d/conf/main.cf"
    sed "s/^smtp \+inet .*/127.0.0.1:$2 inet n - n - - smtpd/" /etc/postfix/master.cf >"$d/conf/master.cf"
    postfix -c "$d/conf" start >/dev/null 2>&1
}

# stop_postfix DIR: stops the instance started in DIR, if any.
stop_postfix() {
    [ -f "$1/conf/main.cf" ] && postfix -c "$1/conf" stop >/dev/null 2>&1 || true
}

# milter_main_cf SPEC: the main.cf lines that make Postfix call stormbreaker at SPEC
# (inet:HOST:PORT or unix:PATH), tempfailing mail when it cannot be reached.
milter_main_cf() {
    sed -e "s|@MILTER@|$1|g" "$SB_POSTFIX_TEMPLATES/postfix-milter.cf"
}
