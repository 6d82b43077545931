#!/usr/bin/env bash
# Fuzzes the wire layer through the paths production uses (fuzz/fuzz_targets/):
#   smtp_command  command lines: next_line, parse, the MAIL/RCPT lines sent upstream
#   smtp_data     the DATA decoder in any split, and re-stuffed content (SMTP smuggling)
#   milter_codec  the milter FrameReader in any split, command parsing, the session, answers
#   headers       thread-key fingerprinting of header blocks
#
# Usage: benches/fuzz.sh [SECONDS] [TARGET...]   (default 60 s for each of the four)
# Prints per target the inputs executed and whether anything was found; exits 1 if anything was.
# A finding is saved under fuzz/artifacts/TARGET/; the script prints how to replay it.
#
# Needs only stable Rust: cargo-fuzz is installed if missing; RUSTC_BOOTSTRAP=1 lets stable
# rustc take libFuzzer's coverage flags, and -s none leaves out the sanitizers, whose runtimes
# only nightly ships (debug assertions stay on, so overflows panic). The first build of the
# release fuzz binaries takes about 6 minutes on 2 cores. Seeds come from fuzz/corpus/TARGET/
# (small, hand-written, committed); what the fuzzer adds goes to fuzz/target/corpus/TARGET/
# (not committed), so later runs start from there.
set -euo pipefail

SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(smtp_command smtp_data milter_codec headers)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..." >&2
    cargo install --locked cargo-fuzz >&2
fi

cd "$ROOT"
echo "building the fuzz targets..." >&2
for target in "${TARGETS[@]}"; do
    cargo fuzz build -s none "$target" >&2
done

found=0
printf '%-14s %12s %8s  %s\n' target executions seconds result
for target in "${TARGETS[@]}"; do
    work="$ROOT/fuzz/target/corpus/$target"
    artifacts="$ROOT/fuzz/artifacts/$target"
    mkdir -p "$work" "$artifacts"
    log=$(mktemp)
    before=$(ls "$artifacts" | wc -l)
    start=$(date +%s)
    status=0
    # -timeout: an input that takes over 10 s counts as a hang and is reported like a crash.
    cargo fuzz run -s none "$target" "$work" "$ROOT/fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    elapsed=$(( $(date +%s) - start ))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
    after=$(ls "$artifacts" | wc -l)
    if [ "$status" -eq 0 ] && [ "$after" -eq "$before" ]; then
        result="nothing found"
    else
        found=1
        artifact=$(ls -t "$artifacts" | head -1)
        result="FOUND (exit $status): fuzz/artifacts/$target/$artifact"
        grep -E "panicked at|^SUMMARY|ERROR: libFuzzer" -A2 "$log" | head -8 >&2 || tail -20 "$log" >&2
        echo "replay: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $target fuzz/artifacts/$target/$artifact" >&2
    fi
    printf '%-14s %12s %8s  %s\n' "$target" "${runs:-?}" "$elapsed" "$result"
    rm -f "$log"
done
exit $found
