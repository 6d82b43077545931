#!/usr/bin/env bash
# Side-by-side end-to-end comparison, in one run, with Postfix's smtp-source as the client and
# smtp-sink as the final hop (issue 7):
#   direct   smtp-source -> smtp-sink                          (the loopback limit)
#   proxy    smtp-source -> stormbreaker proxy -> smtp-sink     (release build)
#   haraka   smtp-source -> Haraka 3.3.4 smtp_forward -> smtp-sink
#   postfix  smtp-source -> Postfix (relayhost) -> smtp-sink
#   milter   smtp-source -> Postfix + stormbreaker milter -> smtp-sink
#   front    smtp-source -> stormbreaker proxy (XCLIENT) -> Postfix -> smtp-sink: the proxy as
#            the listener in front of Postfix (README), beside `postfix`, the same instance alone
# For every load, each round runs every peer once: in the order of PEERS on odd rounds and in
# reverse on even ones (alternating, so noise on a shared machine hits all alike and no peer
# always runs right after another); each figure is the median over the rounds and is reported
# as a ratio to the direct run's median. Each Postfix keeps its directory (queue included) on
# its own journaled ext4 image, loop-mounted, as a production server's queue is journaled: this
# machine's root filesystem has no journal, and without one ext4 skips inodes freed in the last
# minute when it creates a file (`recently_deleted`), so a run right after another deleted
# 5,000 queue files paid for that run (`postfix` and `front` share one Postfix). A round's time
# runs from smtp-source's start to the last message handed to smtp-sink: smtp-source's exit for
# direct, proxy and Haraka (they relay before they answer the final dot), the queue being empty
# for Postfix (it answers once it has queued).
#
# Loads (smtp-source opens one connection per message, `SESSIONS` at a time):
#   small   MESSAGES x 2 KB, 1 recipient
#   rcpt100 RCPT_MESSAGES x 2 KB, 100 recipients each (-r 100)
#   big     BIG_MESSAGES x 200 KB (-l 204800)
#   storm   STORM_MESSAGES x 2 KB, STORM_PERCENT % of them reply-alls: STORM_SESSIONS more
#           smtp-sources, one session and one sender each (a storm is people: one sender's own
#           messages count once), send `Subject: Re: all hands` to the declared list
#           allstaff@corp.test (5,000 members, so every one is a wide reply); after trip_replies
#           (3) people the thread's breaker opens and stormbreaker quarantines the rest (fsynced
#           to disk), proxy and milter alike. smtp-source cannot write In-Reply-To, so the thread
#           is keyed by the normalised subject, which the engine counts as a reply thread too.
#
# Usage: benches/compare.sh            (defaults: about 8 minutes on 2 cores)
#        KEEP=1 benches/compare.sh     (keep the work folder: logs, queues, quarantine)
# Environment overrides: ROUNDS=3 SESSIONS=20 MESSAGES=5000 RCPT_MESSAGES=500 BIG_MESSAGES=300
#   STORM_MESSAGES=2000 STORM_PERCENT=25 STORM_SESSIONS=5 LOADS="small rcpt100 big storm"
#   PEERS="direct proxy haraka postfix milter front" PASS_CLIENT=true (proxy XCLIENT/XFORWARD to sink;
#   FRONT_PASS_CLIENT the same for `front`, default true;
#   '"xforward"' for XFORWARD with upstream connection reuse) MILTER_TRANSPORT=unix (or inet)
#   QUEUE_FS=journal (each Postfix's directory on its own journaled ext4 image, see below; `disk`
#   keeps it in the work folder)
#   HARAKA_DIR=/var/tmp/stormbreaker-bench-haraka (npm cache of Haraka 3.3.4) OUT=FILE (tsv of
#   every round). Needs root (Postfix, smtp-sink -u), node and npm for Haraka, python3.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-5000}
RCPT_MESSAGES=${RCPT_MESSAGES:-500}
BIG_MESSAGES=${BIG_MESSAGES:-300}
STORM_MESSAGES=${STORM_MESSAGES:-2000}
STORM_PERCENT=${STORM_PERCENT:-25}
STORM_SESSIONS=${STORM_SESSIONS:-5}
LOADS=${LOADS:-small rcpt100 big storm}
PEERS=${PEERS:-direct proxy haraka postfix milter front}
PASS_CLIENT=${PASS_CLIENT:-true}
HARAKA_DIR=${HARAKA_DIR:-/var/tmp/stormbreaker-bench-haraka}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/stormbreaker
. "$ROOT/benches/lib.sh"

has() { [[ " $PEERS " == *" $1 "* ]]; }

# --- what it needs ---------------------------------------------------------------------------
need_postfix
if has haraka && [ ! -x "$HARAKA_DIR/node_modules/.bin/haraka" ]; then
    echo "installing Haraka 3.3.4 into $HARAKA_DIR..." >&2
    mkdir -p "$HARAKA_DIR"
    (cd "$HARAKA_DIR" && npm install --no-audit --no-fund Haraka@3.3.4 >/dev/null 2>&1)
fi
(cd "$ROOT" && cargo build --release --quiet --bin stormbreaker)

# --- servers ---------------------------------------------------------------------------------
WORK=$(mktemp -d -p /var/tmp sb-compare.XXXXXX)   # on disk, not tmpfs: quarantine fsyncs count
chmod 755 "$WORK"
GROUPS_=()   # each server runs in its own session (setsid); stopped by its process group
cleanup() {
    set +e
    [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
    for inst in postfix milter; do stop_postfix "$WORK/$inst"; done
    for pgid in "${GROUPS_[@]}"; do kill -TERM -- "-$pgid" 2>/dev/null; done
    sleep 1
    for pgid in "${GROUPS_[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null; done
    for inst in postfix milter; do mountpoint -q "$WORK/$inst" && umount -l "$WORK/$inst"; done
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { # log-file command... ; runs it in a new session, remembers its group
    local log=$1; shift
    setsid "$@" >"$log" 2>&1 </dev/null &
    GROUPS_+=($!)
    LAST_PID=$!
}
# queue_fs DIR: mounts a fresh journaled ext4 image at DIR for a Postfix instance (QUEUE_FS).
queue_fs() {
    mkdir -p "$1"
    [ "${QUEUE_FS:-journal}" = journal ] || return 0
    truncate -s 4G "$1.img"
    if mkfs.ext4 -q -F -j "$1.img" && mount -o loop "$1.img" "$1"; then
        chmod 755 "$1"
    else
        echo "warning: no journaled image for $1 (QUEUE_FS); its queue stays on $(df --output=source "$WORK" | tail -1)" >&2
    fi
}
SINK=$(free_port)
start "$WORK/sink.log" smtp-sink -u nobody "127.0.0.1:$SINK" 2000
wait_port "$SINK" smtp-sink "$WORK/sink.log"

policy() { # the same policy for the proxy and the milter: the storm mix trips at 3 people
    cat <<EOF
[policy]
wide_audience = 2500
trip_replies = 3
window = "1h"
block_for = "6h"
action = "quarantine"

[[lists]]
address = "allstaff@corp.test"
members = 5000

[log]
level = "warn"
EOF
}

start_proxy() { # name listen-port upstream-port pass_client
    mkdir -p "$WORK/$1"
    { cat <<EOF
[proxy]
listen = "127.0.0.1:$2"
hostname = "bench.test"
max_connections = 5000
max_recipients = 1000

[upstream]
address = "127.0.0.1:$3"
pass_client = $4

[quarantine]
dir = "$WORK/$1/quarantine"

EOF
      policy; } >"$WORK/$1/stormbreaker.toml"
    start "$WORK/$1/stormbreaker.log" "$BIN" run --config "$WORK/$1/stormbreaker.toml"
    wait_port "$2" "stormbreaker $1" "$WORK/$1/stormbreaker.log"
}
if has proxy; then
    PROXY=$(free_port)
    start_proxy proxy "$PROXY" "$SINK" "$PASS_CLIENT"
    PROXY_PID=$LAST_PID
fi

if has haraka; then
    HARAKA=$(free_port)
    H=$WORK/haraka
    "$HARAKA_DIR/node_modules/.bin/haraka" -i "$H" >/dev/null 2>&1
    printf 'rcpt_to.in_host_list\nqueue/smtp_forward\n' >"$H/config/plugins"
    echo corp.test >"$H/config/host_list"
    printf '[main]\nlisten=127.0.0.1:%s\n' "$HARAKA" >"$H/config/smtp.ini"
    printf '[main]\nlevel=warn\n' >"$H/config/log.ini"
    printf 'host=127.0.0.1\nport=%s\nenable_tls=false\n' "$SINK" >"$H/config/smtp_forward.ini"
    start "$WORK/haraka.log" "$HARAKA_DIR/node_modules/.bin/haraka" -c "$H"
    HARAKA_PID=$LAST_PID
    wait_port "$HARAKA" Haraka "$WORK/haraka.log"
fi

if has postfix || has front; then
    POSTFIX=$(free_port)
    # `front` passes the real client with XCLIENT, as in front of a production Postfix.
    queue_fs "$WORK/postfix"
    start_postfix "$WORK/postfix" "$POSTFIX" "$SINK" "smtpd_authorized_xclient_hosts = 127.0.0.0/8"
    wait_port "$POSTFIX" "Postfix" "$WORK/postfix/maillog"
fi
if has milter; then
    MILTER=$(free_port); MILTER_SMTP=$(free_port)
    mkdir -p "$WORK/sbmilter"
    # The recommended transport is a unix socket (README); MILTER_TRANSPORT=inet for TCP.
    if [ "${MILTER_TRANSPORT:-unix}" = unix ]; then
        MILTER_LISTEN="$WORK/sbmilter/milter.sock"; MILTER_SPEC="unix:$MILTER_LISTEN"
    else
        MILTER_LISTEN="127.0.0.1:$MILTER"; MILTER_SPEC="inet:127.0.0.1:$MILTER"
    fi
    { cat <<EOF
[milter]
listen = "$MILTER_LISTEN"

[quarantine]
dir = "$WORK/sbmilter/quarantine"

EOF
      policy; } >"$WORK/sbmilter/stormbreaker.toml"
    start "$WORK/sbmilter/stormbreaker.log" "$BIN" run --config "$WORK/sbmilter/stormbreaker.toml"
    MILTER_PID=$LAST_PID
    if [ "${MILTER_TRANSPORT:-unix}" = unix ]; then
        for _ in $(seq 100); do [ -S "$MILTER_LISTEN" ] && break; sleep 0.1; done
    else
        wait_port "$MILTER" "stormbreaker milter" "$WORK/sbmilter/stormbreaker.log"
    fi
    queue_fs "$WORK/milter"
    start_postfix "$WORK/milter" "$MILTER_SMTP" "$SINK" "$(milter_main_cf "$MILTER_SPEC")"
    wait_port "$MILTER_SMTP" "Postfix with milter" "$WORK/milter/maillog"
fi

if has front; then
    FRONT=$(free_port)
    start_proxy front "$FRONT" "$POSTFIX" "${FRONT_PASS_CLIENT:-true}"
    FRONT_PID=$LAST_PID
fi

# --- loads -----------------------------------------------------------------------------------
port_of() {
    case $1 in
        direct) echo "$SINK" ;; proxy) echo "$PROXY" ;; haraka) echo "$HARAKA" ;;
        postfix) echo "$POSTFIX" ;; milter) echo "$MILTER_SMTP" ;; front) echo "$FRONT" ;;
    esac
}
queue_empty() { # no message left in a Postfix instance's queue
    [ -z "$(find "$WORK/$1/queue/incoming" "$WORK/$1/queue/active" "$WORK/$1/queue/deferred" \
        "$WORK/$1/queue/maildrop" -type f -print -quit 2>/dev/null)" ]
}
drain() {
    for _ in $(seq 6000); do queue_empty "$1" && return 0; sleep 0.02; done
    echo "queue of $1 did not drain in 120 s" >&2
    return 1
}
ERRLOG=$WORK/smtp-source.err
send() { # port load count; runs smtp-source (two of them for the storm mix) and waits
    local port=$1 load=$2 n=$3 common=(-f a@corp.test -c)
    case $load in
        small) smtp-source -s "$SESSIONS" -m "$n" -l 2048 -t b@corp.test "${common[@]}" "127.0.0.1:$port" ;;
        rcpt100) smtp-source -s "$SESSIONS" -m "$n" -l 2048 -r 100 -t b@corp.test "${common[@]}" "127.0.0.1:$port" ;;
        big) smtp-source -s "$SESSIONS" -m "$n" -l 204800 -t b@corp.test "${common[@]}" "127.0.0.1:$port" ;;
        storm)
            local storm=$((n * STORM_PERCENT / 100))
            smtp-source -s "$((SESSIONS - STORM_SESSIONS))" -m "$((n - storm))" -l 2048 -t b@corp.test \
                "${common[@]}" "127.0.0.1:$port" &
            local other=$!
            # One smtp-source per storm session, each its own person: a storm is people
            # replying (one sender's own messages count once).
            local pids=() i
            for i in $(seq "$STORM_SESSIONS"); do
                smtp-source -s 1 -m "$((storm / STORM_SESSIONS))" -l 2048 -S "Re: all hands" \
                    -t allstaff@corp.test -f "person$i@corp.test" -c "127.0.0.1:$port" &
                pids+=($!)
            done
            wait "$other" "${pids[@]}" ;;
    esac
}
count_of() {
    case $1 in
        small) echo "$MESSAGES" ;; rcpt100) echo "$RCPT_MESSAGES" ;;
        big) echo "$BIG_MESSAGES" ;; storm) echo "$STORM_MESSAGES" ;;
    esac
}
run() { # peer load count -> seconds on stdout; errors of smtp-source go to $ERRLOG
    local peer=$1 load=$2 n=$3 t0 t1 done_=0
    echo "$n" >>"$WORK/sent.$peer"   # messages per peer, for CPU per message at the end
    t0=$(date +%s.%N)
    # -c prints a counter on stdout; smtp-source reports every failed transaction on stderr
    if ! send "$(port_of "$peer")" "$load" "$n" >/dev/null 2>>"$ERRLOG.$peer.$load"; then
        echo "smtp-source failed against $peer ($load)" >>"$ERRLOG.$peer.$load"
    fi
    case $peer in postfix | milter) drain "$peer" || true ;; front) drain postfix || true ;; esac
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.4f}')"
}

OUT=${OUT:-$WORK/rounds.tsv}
: >"$OUT"
LOADAVG=$WORK/loadavg
(while sleep 5; do cut -d' ' -f1 /proc/loadavg; done) >"$LOADAVG" &
SAMPLER=$!

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
echo "machine: $(nproc) cores, $(free -h | awk '/Mem:/ {print $2}') memory, load $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "peers: $PEERS; loads: $LOADS; $ROUNDS rounds; $SESSIONS sessions; Postfix directories: ${QUEUE_FS:-journal}; proxy pass_client=$PASS_CLIENT; front pass_client=${FRONT_PASS_CLIENT:-true}"
for load in $LOADS; do
    n=$(count_of "$load")
    for peer in $PEERS; do run "$peer" "$load" $((n / 20 + 20)) >/dev/null; done   # warm-up
    for r in $(seq "$ROUNDS"); do
        line="$load round $r:"
        order=$PEERS
        [ $((r % 2)) = 0 ] && order=$(printf '%s\n' $PEERS | tac | xargs)
        for peer in $order; do
            s=$(run "$peer" "$load" "$n")
            printf '%s\t%s\t%s\t%s\t%s\n' "$load" "$n" "$peer" "$r" "$s" >>"$OUT"
            line+=" $peer $s s"
        done
        echo "$line"
    done
done
kill "$SAMPLER" 2>/dev/null || true

echo
echo "load average during the run (5 s samples): $(sort -n "$LOADAVG" | awk '{a[NR]=$1} END {if (NR) printf "min %s median %s max %s", a[1], a[int((NR+1)/2)], a[NR]}')"
sent() { awk '{s += $1} END {print s + 0}' "$WORK/sent.$1" 2>/dev/null || echo 0; }
per_message() { # pid peer -> "X s, Y ms per message"
    python3 -c "c = $(cpu_of "$1") / $(getconf CLK_TCK); n = $(sent "$2"); print(f'{c:.2f} s, {1000 * c / max(n, 1):.3f} ms per message')"
}
[ -n "${PROXY_PID:-}" ] && echo "stormbreaker proxy CPU: $(per_message "$PROXY_PID" proxy), RSS $(awk '/VmRSS/ {print $2}' /proc/$PROXY_PID/status) KiB"
[ -n "${FRONT_PID:-}" ] && echo "stormbreaker front CPU: $(per_message "$FRONT_PID" front)"
[ -n "${MILTER_PID:-}" ] && echo "stormbreaker milter CPU: $(per_message "$MILTER_PID" milter)"
[ -n "${HARAKA_PID:-}" ] && echo "Haraka CPU: $(per_message "$HARAKA_PID" haraka)"
[ -d "$WORK/proxy/quarantine" ] && echo "held by the proxy (its quarantine): $(find "$WORK/proxy/quarantine/held" -type f | wc -l) messages"
[ -d "$WORK/front/quarantine" ] && echo "held by the front proxy (its quarantine): $(find "$WORK/front/quarantine/held" -type f | wc -l) messages"
[ -d "$WORK/sbmilter/quarantine" ] && echo "held by the milter (its quarantine; Postfix discarded them): $(find "$WORK/sbmilter/quarantine/held" -type f | wc -l) messages"
for f in "$ERRLOG".*; do
    [ -s "$f" ] && echo "smtp-source errors (${f##*.err.}): $(wc -l <"$f") lines, first: $(head -1 "$f")"
done
for p in proxy front; do
    [ -s "$WORK/$p/stormbreaker.log" ] && grep -q ERROR "$WORK/$p/stormbreaker.log" && echo "$p logged errors: $(grep ERROR "$WORK/$p/stormbreaker.log" | head -3)"
done
echo
python3 - "$OUT" "$PEERS" "${FRONT_PASS_CLIENT:-true}" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
peers = sys.argv[2].split()
loads = list(dict.fromkeys(r[0] for r in rows))
times = {}
for load, n, peer, rnd, s in rows:
    times.setdefault((load, n), {}).setdefault(peer, {})[int(rnd)] = float(s)
print("| load | " + " | ".join(peers) + " |")
print("|---|" + "---|" * len(peers))
for (load, n), by_peer in times.items():
    direct = by_peer.get("direct")
    cells = []
    for p in peers:
        t = by_peer.get(p)
        if not t:
            cells.append("-"); continue
        med = statistics.median(t.values())
        if direct and p != "direct":
            # median of the per-round ratios: each round's peers ran back to back
            ratio = statistics.median(t[r] / direct[r] for r in t if r in direct)
            cells.append(f"{med:.2f} s ({ratio:.2f}x)")
        else:
            cells.append(f"{med:.2f} s")
    label = {"small": f"{n} x 2 KB", "rcpt100": f"{n} x 2 KB x 100 rcpt",
             "big": f"{n} x 200 KB", "storm": f"{n} x 2 KB storm mix"}.get(load, load)
    print(f"| {label} | " + " | ".join(cells) + " |")
    if "postfix" in by_peer and "milter" in by_peer:
        pf, mi = by_peer["postfix"], by_peer["milter"]
        share = statistics.median(pf[r] / mi[r] for r in pf if r in mi)
        print(f"|  ↳ Postfix+milter throughput vs Postfix alone | {100 * share:.1f}% |" + " |" * (len(peers) - 1))
    if "postfix" in by_peer and "front" in by_peer:
        pf, fr = by_peer["postfix"], by_peer["front"]
        cost = statistics.median(fr[r] / pf[r] for r in fr if r in pf)
        print(f"|  ↳ proxy in front of Postfix (pass_client = {sys.argv[3]}): time vs Postfix alone | {cost:.2f}x |" + " |" * (len(peers) - 1))
EOF
echo "(median seconds over the rounds; in brackets the median of the per-round ratios to direct)"
