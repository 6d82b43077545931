#!/usr/bin/env bash
# Milter throughput: Postfix with stormbreaker as its milter against the same Postfix without it.
#
# Two private Postfix instances (same main.cf, one with `smtpd_milters`) relay to one smtp-sink.
# smtp-source sends the same load to each in alternating rounds (so noise on a shared machine
# hits both alike); a round is timed from the first connection to the last 250, and the queue
# is drained before the next round. Prints each round, the median throughputs and their ratio.
# Target: with the milter >= 90% of Postfix alone.
#
# Usage: benches/milter.sh [ROUNDS] [MESSAGES] [SESSIONS] [SIZE]   (defaults 3 2000 20 2048)
# Rounds alternate which instance goes first. AA=1 runs both without the milter (an A/A check of
# the benchmark itself). Environment: SB_TRACE_HEADER=true adds the X-Stormbreaker header (Postfix's cleanup then edits
# every queue file), SB_LOG_LEVEL (default info: one line per message).
# Needs root (Postfix, smtp-sink -u). Builds target/release/stormbreaker if it is missing.
set -euo pipefail

ROUNDS=${1:-3}
MESSAGES=${2:-2000}
SESSIONS=${3:-20}
SIZE=${4:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/stormbreaker

. "$ROOT/benches/lib.sh"
need_postfix
if [ ! -x "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --bin stormbreaker)
fi

DIR=$(mktemp -d -p /var/tmp sb-bench.XXXXXX)
chmod 755 "$DIR"
# TMPFS=1: both queues in memory. Postfix is then CPU-bound and at its fastest, the harshest
# case for the milter's share, and the shared disk's noise (here +-20% per round) is gone.
if [ "${TMPFS:-0}" = 1 ]; then
    mount -t tmpfs -o size=2g,mode=755 sb-bench "$DIR"
fi
PIDS=()
cleanup() {
    for inst in plain milter; do stop_postfix "$DIR/$inst"; done
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    if [ "${TMPFS:-0}" = 1 ]; then umount "$DIR"; fi
    rm -rf "$DIR"
}
trap cleanup EXIT

SINK_PORT=$(free_port)
smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1000 &
PIDS+=($!)

MILTER_PORT=$(free_port)
# MILTER=unix: Postfix talks to the milter over a unix socket (the recommended setup) instead of
# TCP on 127.0.0.1.
if [ "${MILTER:-inet}" = unix ]; then
    MILTER_LISTEN="$DIR/milter.sock"; MILTER_SPEC="unix:$DIR/milter.sock"
else
    MILTER_LISTEN="127.0.0.1:$MILTER_PORT"; MILTER_SPEC="inet:127.0.0.1:$MILTER_PORT"
fi
cat >"$DIR/stormbreaker.toml" <<EOF
[milter]
listen = "$MILTER_LISTEN"
trace_header = ${SB_TRACE_HEADER:-false}

[log]
level = "${SB_LOG_LEVEL:-info}"

[quarantine]
dir = "$DIR/quarantine"
EOF
"$BIN" run --config "$DIR/stormbreaker.toml" 2>"$DIR/stormbreaker.log" &
SB_PID=$!
PIDS+=($SB_PID)

PLAIN_PORT=$(free_port)
WITH_PORT=$(free_port)
start_postfix "$DIR/plain" "$PLAIN_PORT" "$SINK_PORT"
# AA=1: the "milter" instance runs without the milter, to show the benchmark's own bias.
if [ -n "${AA:-}" ]; then
    start_postfix "$DIR/milter" "$WITH_PORT" "$SINK_PORT"
else
    start_postfix "$DIR/milter" "$WITH_PORT" "$SINK_PORT" "$(milter_main_cf "$MILTER_SPEC")"
fi

wait_port "$SINK_PORT" smtp-sink
wait_port "$PLAIN_PORT" Postfix "$DIR/plain/maillog"
wait_port "$WITH_PORT" "Postfix with the milter" "$DIR/milter/maillog"
for _ in $(seq 100); do
    if [ "${MILTER:-inet}" = unix ]; then [ -S "$MILTER_LISTEN" ] && break
    else (exec 3<>"/dev/tcp/127.0.0.1/$MILTER_PORT") 2>/dev/null && break; fi
    sleep 0.1
done

drain() { # wait until the instance's queue is empty
    for _ in $(seq 600); do
        [ -z "$(postqueue -c "$DIR/$1/conf" -j 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    echo "queue of $1 did not drain" >&2
}

round() { # name port -> messages per second
    local t0 t1
    t0=$(date +%s.%N)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f a@corp.test -t b@corp.test "127.0.0.1:$2"
    t1=$(date +%s.%N)
    drain "$1"
    python3 -c "print(f'{$MESSAGES / ($t1 - $t0):.1f}')"
}

# One small warm-up round each (process start-up, first connections).
MESSAGES_SAVED=$MESSAGES; MESSAGES=200
round plain "$PLAIN_PORT" >/dev/null; round milter "$WITH_PORT" >/dev/null
MESSAGES=$MESSAGES_SAVED

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (a shared machine makes rounds noisy)"
PLAIN=(); WITH=()
for r in $(seq "$ROUNDS"); do
    # Alternate which instance goes first: the second one of a pair pays for the first one's
    # deleted queue files (ext4 journal and discard), worth 5-10% here.
    if [ $((r % 2)) -eq 1 ]; then
        p=$(round plain "$PLAIN_PORT"); w=$(round milter "$WITH_PORT")
    else
        w=$(round milter "$WITH_PORT"); p=$(round plain "$PLAIN_PORT")
    fi
    PLAIN+=("$p"); WITH+=("$w")
    echo "round $r: postfix alone $p msg/s, with stormbreaker milter $w msg/s"
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
cpu_ticks=$(awk '{print $14 + $15}' "/proc/$SB_PID/stat")
echo "stormbreaker CPU time over all rounds: $(python3 -c "print($cpu_ticks / $(getconf CLK_TCK))") s"
rejected=$(grep -c "milter-reject" "$DIR/milter/maillog" || true)
decided=$(grep -c "message delivered" "$DIR/stormbreaker.log" || true)
python3 - "${PLAIN[*]}" "${WITH[*]}" "$MESSAGES" "$SESSIONS" "$SIZE" "$rejected" "$decided" <<'EOF'
import statistics, sys
plain = [float(x) for x in sys.argv[1].split()]
with_ = [float(x) for x in sys.argv[2].split()]
p, w = statistics.median(plain), statistics.median(with_)
print(f"{sys.argv[3]} messages of {sys.argv[5]} bytes, {sys.argv[4]} sessions, {len(plain)} rounds each")
print(f"median: postfix alone {p:.1f} msg/s, with milter {w:.1f} msg/s")
print(f"ratio with/without: {100 * w / p:.1f}% (target >= 90%)")
print(f"milter decisions logged: {sys.argv[7]}, milter-rejects in Postfix's log: {sys.argv[6]}")
EOF
