#!/usr/bin/env bash
# End-to-end throughput: smtp-source -> smtp-sink directly (the loopback limit) beside
# smtp-source -> stormbreaker -> smtp-sink, in alternating rounds; prints each round, the
# medians and the ratio proxy/direct. Installs Postfix's tools when missing.
#
#   benches/e2e.sh [ROUNDS] [SESSIONS] [MESSAGES] [SIZE] [RCPTS] [EXTRA_SMTP_SOURCE_FLAGS]
#   benches/e2e.sh 5 20 5000 2048 1          # the issue's load: 20 sessions x 5,000 x 2 KB
#   benches/e2e.sh 5 20 2000 2048 100        # 100 recipients per message
#   benches/e2e.sh 5 20 1000 204800 1        # 200 KB messages
#   PASS_CLIENT=false benches/e2e.sh         # without XCLIENT/XFORWARD to the sink
#   PASS_CLIENT='"xforward"' benches/e2e.sh  # XFORWARD only: upstream connections are reused
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}; SESSIONS=${2:-20}; MESSAGES=${3:-5000}; SIZE=${4:-2048}; RCPTS=${5:-1}; EXTRA=${6:-}
PASS_CLIENT=${PASS_CLIENT:-true}

. benches/lib.sh
need_postfix
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/stormbreaker

SINK=$(free_port); PROXY=$(free_port)
WORK=$(mktemp -d)
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"; }
PIDS=(); trap cleanup EXIT

smtp-sink -u nobody 127.0.0.1:$SINK 2000 & PIDS+=($!)
cat > "$WORK/policy.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PROXY"
hostname = "bench.test"
max_connections = 5000
max_recipients = 1000
[upstream]
address = "127.0.0.1:$SINK"
pass_client = $PASS_CLIENT
[quarantine]
dir = "$WORK/quarantine"
[log]
level = "warn"
TOML
"$BIN" run --config "$WORK/policy.toml" 2>"$WORK/proxy.log" & PIDS+=($!)
wait_port "$PROXY" stormbreaker "$WORK/proxy.log"

load() { # $1 = port; prints seconds
  local start end
  start=$(date +%s.%N)
  smtp-source $EXTRA -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -r "$RCPTS" \
    -f a@corp.test -t b@corp.test 127.0.0.1:"$1" >/dev/null
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f\n", e - s }'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "load: $SESSIONS sessions x $MESSAGES messages x $SIZE bytes x $RCPTS rcpts ($EXTRA), pass_client=$PASS_CLIENT, $(nproc) cores"
load $SINK >/dev/null; load $PROXY >/dev/null   # warm-up
D=(); P=()
for r in $(seq "$ROUNDS"); do
  d=$(load $SINK); p=$(load $PROXY)
  D+=("$d"); P+=("$p")
  printf 'round %d: direct %.3f s  proxy %.3f s  ratio %.2f\n' "$r" "$d" "$p" "$(awk -v p="$p" -v d="$d" 'BEGIN { print p / d }')"
done
dm=$(printf '%s\n' "${D[@]}" | median); pm=$(printf '%s\n' "${P[@]}" | median)
ratios=(); for i in "${!D[@]}"; do ratios+=("$(awk -v p="${P[$i]}" -v d="${D[$i]}" 'BEGIN { print p / d }')"); done
rm_=$(printf '%s\n' "${ratios[@]}" | median)
printf 'median: direct %.3f s  proxy %.3f s  median ratio proxy/direct %.2f\n' "$dm" "$pm" "$rm_"
if grep -q "ERROR" "$WORK/proxy.log"; then echo "proxy logged errors:"; grep ERROR "$WORK/proxy.log" | head; fi
