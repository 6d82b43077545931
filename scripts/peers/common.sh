# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this file
# Shared by the peer scripts (sourced): where install.sh unpacks things, and small helpers.

export PATH=$PATH:/usr/sbin:/usr/bin:/sbin:/bin

PEERS_CACHE=${STORMBREAKER_PEERS:-/var/tmp/stormbreaker-peers}
EXIM_BIN=$PEERS_CACHE/exim/usr/sbin/exim4
SENDMAIL_ROOT=$PEERS_CACHE/sendmail
SENDMAIL_BIN=$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail
PEERS_M4=$SENDMAIL_ROOT/usr/bin/m4

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# need_file PATH: fails with a pointer to install.sh when PATH is missing.
need_file() {
    [ -e "$1" ] || die "$1 is missing: run scripts/peers/install.sh (as root) first"
}

# set_dir COMMAND DIR: sets $dir to DIR made absolute, as the MTAs' configurations need;
# "start" creates DIR, "stop" of a DIR that does not exist has nothing to do (exits 0), any
# other command fails there.
set_dir() {
    if [ "$1" = start ]; then
        mkdir -p "$2"
    elif [ ! -d "$2" ]; then
        [ "$1" = stop ] && exit 0
        die "no such folder: $2"
    fi
    dir=$(cd "$2" && pwd)
}

now_ms() { date +%s%3N; }

# need_ports PORT...: fails unless each is a TCP port number.
need_ports() {
    local port
    for port in "$@"; do
        if ! [[ $port =~ ^[0-9]{1,5}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
            die "not a port number: '$port'"
        fi
    done
}

# wait_port PORT WHAT LOG [TIMEOUT_S]: waits for a listener on 127.0.0.1:PORT, else fails
# naming WHAT and showing the end of LOG.
wait_port() {
    local deadline=$(($(now_ms) + ${4:-15} * 1000))
    while [ "$(now_ms)" -lt "$deadline" ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$(basename "$0"): nothing listens on 127.0.0.1:$1 ($2)" >&2
    [ -f "$3" ] && tail -20 "$3" >&2
    exit 1
}

# port_free PORT: fails when something already listens on 127.0.0.1:PORT (a daemon from an
# earlier run, or another test's), which would otherwise make start look successful.
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "127.0.0.1:$1 is already in use"
    fi
}

# pid_alive PIDFILE: the pid in PIDFILE (first line) when that process still runs.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(head -1 "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# stop_pid PIDFILE WHAT: SIGTERM to the process in PIDFILE, then waits up to 10 s for it to go
# (SIGKILL after that). Nothing to do when it is not running.
stop_pid() {
    local pid
    pid=$(pid_alive "$1") || { rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
        sleep 0.05
    done
    echo "$(basename "$0"): $2 (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

# traversable_by USER DIR: fails unless USER can reach DIR: every parent must be
# traversable by that user (mktemp -d makes 0700 folders).
traversable_by() {
    local user=$1 dir=$2
    if ! runuser -u "$user" -- test -x "$dir"; then
        die "$dir is not reachable by user $user: make it and its parents world-traversable (chmod o+x)"
    fi
}
