#!/usr/bin/env bash
# A private Exim 4 daemon for the integration tests and benches: it accepts any mail on
# 127.0.0.1:SMTP_PORT and relays everything to 127.0.0.1:RELAY_PORT, in both roles: as a sending
# MTA (inject into it, it relays into stormbreaker's proxy) and as the proxy's upstream (it relays
# to a sink). Everything lives in DIR: exim.conf, spool/, log/mainlog, run/exim.pid.
#
#   exim.sh start DIR SMTP_PORT RELAY_PORT   (re)starts it; returns once it listens
#   exim.sh stop DIR                         stops it (nothing to do when not running)
#   exim.sh queue DIR                        how many messages wait in its queue
#   exim.sh delivered DIR                    how many deliveries succeeded (=> lines in mainlog)
#   exim.sh failures DIR                     mainlog lines of failed (**) and deferred (==) deliveries
#   exim.sh flush DIR                        delivers the whole queue now (exim -qff), retry times or not
#
# Environment for start: EXIM_QUEUE_INTERVAL (default 1s) is how often queued mail is retried.
# By default each message is delivered as it arrives, on its own connection, which Exim ends
# with ".\r\nQUIT\r\n" in one write. EXIM_QUEUE_SMTP=1 (queue_smtp_domains = *) leaves
# delivery to those queue runs instead, which send all the mail waiting for the relay down a few
# connections (Exim then waits for the reply to the dot before the next MAIL). EXIM_MAIN_CONF
# holds more main-section lines (for example "chunking_advertise_hosts =").
# Needs root and scripts/peers/install.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/peers/common.sh
. "$here/common.sh"

usage() {
    sed -n 's/^#   \(exim.sh .*\)/  \1/p' "$0" >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
set_dir "$cmd" "$2"
conf=$dir/exim.conf
pidfile=$dir/run/exim.pid
mainlog=$dir/log/mainlog

exim() { "$EXIM_BIN" -C "$conf" "$@"; }

start() {
    local smtp_port=$1 relay_port=$2 started queue_smtp=
    need_ports "$smtp_port" "$relay_port"
    [ "${EXIM_QUEUE_SMTP:-0}" = 1 ] && queue_smtp='*'
    started=$(now_ms)
    need_file "$EXIM_BIN"
    need_file /usr/sbin/exim4
    stop_pid "$pidfile" exim
    port_free "$smtp_port"
    mkdir -p "$dir/spool" "$dir/log" "$dir/run"
    chown Debian-exim:Debian-exim "$dir/spool" "$dir/log" "$dir/run"
    traversable_by Debian-exim "$dir"

    cat >"$conf" <<EOF
# Written by scripts/peers/exim.sh: accept anything on 127.0.0.1:$smtp_port, relay all of it to
# 127.0.0.1:$relay_port.
exim_user = Debian-exim
exim_group = Debian-exim
spool_directory = $dir/spool
log_file_path = $dir/log/%slog
pid_file_path = $pidfile
primary_hostname = exim.corp.test
qualify_domain = corp.test
daemon_smtp_ports = $smtp_port
local_interfaces = <; 127.0.0.1
keep_environment =
# No DNS nor ident on these machines: never look the client up.
host_lookup =
rfc1413_hosts =
rfc1413_query_timeout = 0s
# Plain SMTP on both legs; a test that wants TLS speaks it to the proxy itself.
tls_advertise_hosts =
acl_smtp_rcpt = accept
# Deliver at once as many messages as a client sends on one connection (default: 10, then
# queue the rest for the next queue run).
smtp_accept_queue_per_connection = 0
smtp_accept_max = 200
queue_run_max = 5
remote_max_parallel = 4
queue_smtp_domains = $queue_smtp
log_selector = +smtp_connection +smtp_protocol_error +smtp_syntax_error +pipelining \\
  +deliver_time +received_recipients +outgoing_port +smtp_confirmation -queue_run
# A test reads failures from mainlog: no warning mail about a delay, and a bounce that cannot
# be delivered either is dropped instead of staying frozen in the queue (and in its count).
delay_warning =
ignore_bounce_errors_after = 0s
${EXIM_MAIN_CONF:-}

begin acl

begin routers

relay_all:
  driver = manualroute
  route_list = * 127.0.0.1::$relay_port
  # 127.0.0.1 is also this host: send there anyway.
  self = send
  transport = relay_smtp
  no_more

begin transports

relay_smtp:
  driver = smtp
  port = $relay_port
  allow_localhost
  hosts_avoid_tls = *

begin retry

# Try again every 2 s for an hour: a test that restarts its sink sees delivery resume quickly.
* * F,1h,2s
EOF
    exim -bV >/dev/null 2>"$dir/config-check.err" ||
        { cat "$dir/config-check.err" >&2; die "exim rejects $conf"; }
    exim -bd -q"${EXIM_QUEUE_INTERVAL:-1s}" -oP "$pidfile"
    wait_port "$smtp_port" "exim, $dir" "$dir/log/paniclog"
    echo "exim: 127.0.0.1:$smtp_port -> 127.0.0.1:$relay_port, pid $(head -1 "$pidfile" 2>/dev/null), started in $(($(now_ms) - started)) ms ($dir)"
}

case $cmd in
start)
    [ $# -eq 4 ] || usage
    start "$3" "$4"
    ;;
stop)
    stop_pid "$pidfile" exim
    ;;
queue)
    need_file "$conf"
    exim -bpc
    ;;
delivered)
    grep -c ' => ' "$mainlog" || true
    ;;
failures)
    grep -E ' (\*\*|==) ' "$mainlog" || true
    ;;
flush)
    need_file "$conf"
    exim -qff
    ;;
*)
    usage
    ;;
esac
