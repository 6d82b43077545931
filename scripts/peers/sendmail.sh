#!/usr/bin/env bash
# A private Sendmail 8.17 daemon that calls stormbreaker as its milter (INPUT_MAIL_FILTER): it
# accepts any mail on 127.0.0.1:SMTP_PORT, asks the milter, and relays what it accepts to
# 127.0.0.1:RELAY_PORT. Everything lives in DIR: sendmail.mc, sendmail.cf, queue/, sendmail.pid.
#
#   sendmail.sh start DIR SMTP_PORT RELAY_PORT MILTER   (re)starts it; returns once it listens
#   sendmail.sh stop DIR                                stops it (nothing to do when not running)
#   sendmail.sh queue DIR                               lists the ordinary queue (mailq)
#   sendmail.sh held DIR                                lists the quarantined (held) messages
#   sendmail.sh held-ids DIR                            their queue ids, one a line
#   sendmail.sh release DIR ID                          releases a held message and delivers it now
#                                                       (exit 1 when it stays queued)
#
# MILTER: a port (inet:PORT@127.0.0.1), an absolute path (a Unix socket), any Sendmail socket
# spec ("inet:PORT@HOST", "local:PATH"), or "none" for no milter at all.
# Environment for start: SENDMAIL_MILTER_FLAGS (default T: tempfail when the milter cannot be
# reached; "R" rejects, "" accepts), SENDMAIL_QUEUE_INTERVAL (default 5s: how often deferred
# mail is retried), SENDMAIL_TRACE=1 (every SMTP byte both ways into DIR/trace, since Sendmail
# logs only to syslog, which these machines lack).
# Needs root and scripts/peers/install.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/peers/common.sh
. "$here/common.sh"

usage() {
    sed -n 's/^#   \(sendmail.sh .*\)/  \1/p' "$0" >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
set_dir "$cmd" "$2"
cf=$dir/sendmail.cf
pidfile=$dir/sendmail.pid

# Sendmail wants the host's own name fully qualified and, when it is not ("vm" here), tries to
# resolve it and sleeps 60 s when that fails, before it even reads its .cf: every sendmail run
# (daemon, release, queue run) gets a dotted host name in a UTS namespace of its own instead.
sendmail() {
    unshare --uts sh -c 'hostname sendmail.corp.test && exec "$@"' sh "$SENDMAIL_BIN" -C "$cf" "$@"
}

milter_socket() {
    case $1 in
    none) echo "" ;;
    *[!0-9]*)
        case $1 in
        /*) echo "local:$1" ;;
        *) echo "$1" ;;
        esac
        ;;
    *) echo "inet:$1@127.0.0.1" ;;
    esac
}

start() {
    local smtp_port=$1 relay_port=$2 socket started cfdir=$SENDMAIL_ROOT/usr/share/sendmail/cf
    need_ports "$smtp_port" "$relay_port"
    started=$(now_ms)
    need_file "$SENDMAIL_BIN"
    socket=$(milter_socket "$3")
    stop_pid "$pidfile" sendmail
    port_free "$smtp_port"
    # Sendmail refuses a queue folder others can write to or read.
    mkdir -p "$dir/queue"
    chmod 700 "$dir/queue"

    {
        cat <<EOF
divert(-1)
Written by scripts/peers/sendmail.sh: accept anything on 127.0.0.1:$smtp_port, call the milter
at "${socket:-none}", relay everything to 127.0.0.1:$relay_port.
divert(0)dnl
VERSIONID(\`stormbreaker test peer')dnl
OSTYPE(\`linux')dnl
dnl A fixed name: no DNS on these machines, and no wait for the host's own name to resolve.
define(\`confDOMAIN_NAME', \`sendmail.corp.test')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`QUEUE_DIR', \`$dir/queue')dnl
define(\`confPID_FILE', \`$pidfile')dnl
define(\`STATUS_FILE', \`$dir/statistics')dnl
define(\`ALIAS_FILE', \`')dnl
define(\`HELP_FILE', \`')dnl
dnl Two busy cores: do not queue or refuse mail because of the load average.
define(\`confQUEUE_LA', \`1000')dnl
define(\`confREFUSE_LA', \`1000')dnl
define(\`confDELAY_LA', \`0')dnl
define(\`confMIN_FREE_BLOCKS', \`0')dnl
define(\`confLOG_LEVEL', \`14')dnl
define(\`confMILTER_LOG_LEVEL', \`14')dnl
define(\`SMART_HOST', \`[127.0.0.1]')dnl
define(\`RELAY_MAILER_ARGS', \`TCP \$h $relay_port')dnl
define(\`ESMTP_MAILER_ARGS', \`TCP \$h $relay_port')dnl
define(\`SMTP_MAILER_ARGS', \`TCP \$h $relay_port')dnl
define(\`SMTP8_MAILER_ARGS', \`TCP \$h $relay_port')dnl
define(\`DSMTP_MAILER_ARGS', \`TCP \$h $relay_port')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
FEATURE(\`accept_unqualified_senders')dnl
FEATURE(\`promiscuous_relay')dnl
dnl M=A: no AUTH offered (Sendmail would offer the system sasldb's mechanisms).
DAEMON_OPTIONS(\`Port=$smtp_port, Addr=127.0.0.1, Name=MTA, M=A')dnl
EOF
        if [ -n "$socket" ]; then
            echo "INPUT_MAIL_FILTER(\`stormbreaker', \`S=$socket, F=${SENDMAIL_MILTER_FLAGS-T}, T=C:5s;S:10s;R:20s;E:1m')dnl"
        fi
        echo "MAILER(\`smtp')dnl"
    } >"$dir/sendmail.mc"
    # m4 warns on stderr about promiscuous_relay (on purpose here): shown only when m4 fails.
    "$PEERS_M4" -D_CF_DIR_="$cfdir/" "$cfdir/m4/cf.m4" "$dir/sendmail.mc" >"$cf.new" 2>"$dir/m4.err" ||
        { cat "$dir/m4.err" >&2; die "m4 cannot build $cf from $dir/sendmail.mc"; }
    mv "$cf.new" "$cf"

    local trace=()
    [ "${SENDMAIL_TRACE:-0}" = 1 ] && trace=(-X "$dir/trace")
    sendmail -bd -q"${SENDMAIL_QUEUE_INTERVAL:-5s}" "${trace[@]}" \
        >"$dir/start.out" 2>&1 ||
        { cat "$dir/start.out" >&2; die "sendmail -C $cf -bd failed"; }
    wait_port "$smtp_port" "sendmail, $dir" "$dir/start.out"
    echo "sendmail: 127.0.0.1:$smtp_port -> 127.0.0.1:$relay_port, milter ${socket:-none}, pid $(head -1 "$pidfile" 2>/dev/null), started in $(($(now_ms) - started)) ms ($dir)"
}

case $cmd in
start)
    [ $# -eq 5 ] || usage
    start "$3" "$4" "$5"
    ;;
stop)
    stop_pid "$pidfile" sendmail
    ;;
queue)
    need_file "$cf"
    sendmail -bp
    ;;
held)
    need_file "$cf"
    sendmail -bp -qQ
    ;;
held-ids)
    # A held message is its hf file (qf renamed) in the queue folder.
    find "$dir/queue" -maxdepth 1 -name 'hf*' -printf '%f\n' | sed 's/^hf//' | sort
    ;;
release)
    [ $# -eq 3 ] || usage
    need_file "$cf"
    [ -f "$dir/queue/hf$3" ] || die "no held message $3 in $dir/queue"
    # -Q with no reason on quarantined items (-qQ) matching the id: hf becomes qf again.
    sendmail -qQ -qI"$3" -Q
    [ -e "$dir/queue/hf$3" ] && die "sendmail did not release $3"
    # Deliver it now rather than at the next queue run; -v keeps that run in the foreground.
    sendmail -qI"$3" -v >"$dir/release-$3.log" 2>&1 || true
    # The daemon's own queue run may hold the message (locked) at that moment: give it time.
    for _ in $(seq 100); do
        [ -e "$dir/queue/qf$3" ] || break
        sleep 0.1
    done
    if [ -e "$dir/queue/qf$3" ]; then
        tail -5 "$dir/release-$3.log" >&2
        die "released $3, but it is still queued after 10 s (transcript in $dir/release-$3.log)"
    fi
    echo "released and delivered $3"
    ;;
*)
    usage
    ;;
esac
