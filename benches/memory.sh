#!/usr/bin/env bash
# Resident memory of the proxy per idle client session: starts stormbreaker in front of
# smtp-sink, opens N idle SMTP sessions (greeted and EHLO'd, each with its upstream session
# open), and prints the RSS before and after, per session.
#
#   benches/memory.sh [SESSIONS]        # default 5000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
. benches/lib.sh
need_postfix
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/stormbreaker
ulimit -n "$(ulimit -Hn)"   # a session holds two descriptors: client and upstream
SINK=$(free_port); PROXY=$(free_port); WORK=$(mktemp -d)
PIDS=(); cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"; }; trap cleanup EXIT
smtp-sink -u nobody -m $((N + 100)) 127.0.0.1:$SINK 4096 & PIDS+=($!)
cat > "$WORK/policy.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PROXY"
hostname = "bench.test"
max_connections = $((N + 100))
[upstream]
address = "127.0.0.1:$SINK"
[quarantine]
dir = "$WORK/quarantine"
[log]
level = "warn"
TOML
"$BIN" run --config "$WORK/policy.toml" 2>"$WORK/proxy.log" & PID=$!; PIDS+=($PID)
wait_port "$PROXY" stormbreaker "$WORK/proxy.log"
sleep 0.5
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
BEFORE=$(rss)
WITH=$(python3 - "$PROXY" "$N" "$PID" <<'PY'
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def session(held):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    assert (await r.readline()).startswith(b"220")
    w.write(b"EHLO idle.test\r\n")
    while True:
        line = await r.readline()
        if line[3:4] == b" ":
            break
    held.append((r, w))
async def main():
    held = []
    for i in range(0, n, 500):
        await asyncio.gather(*(session(held) for _ in range(min(500, n - i))))
    rss = int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
    assert len(held) == n, f"only {len(held)} sessions opened"
    print(rss)
    for r, w in held:
        w.close()
asyncio.run(main())
PY
)
echo "proxy RSS: $BEFORE KiB at rest, $WITH KiB with $N idle sessions (each with its upstream session)"
echo "per idle session: $(( (WITH - BEFORE) * 1024 / N )) bytes"
