#!/usr/bin/env bash
# Checks every peer script against real peers on this machine and prints what it saw (the bytes
# the MTAs send after the final dot, start-up times); exits non-zero at the first check that
# fails. Stops everything it started, also when interrupted. Takes 25-60 s. Needs root.
#
#   check.sh [STORMBREAKER_BINARY | none]
#
# With a stormbreaker binary (default: target/release or target/debug, when built), Sendmail
# calls it as its milter and a reply-all storm gets held in Sendmail's quarantine and released;
# without one ("none", or none built), Sendmail's call to an absent milter is checked (F=T: the
# message is tempfailed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/peers/common.sh
. "$here/common.sh"

repo=$(cd "$here/../.." && pwd)
binary=${1:-}
if [ "$binary" = none ]; then
    binary=
elif [ -z "$binary" ]; then
    for candidate in "$repo/target/release/stormbreaker" "$repo/target/debug/stormbreaker"; do
        [ -x "$candidate" ] && { binary=$candidate; break; }
    done
fi

"$here/install.sh" >/dev/null

# Under /var/tmp: the tap's and Postfix's files stay reachable by the postfix/exim/nobody users.
work=$(mktemp -d /var/tmp/stormbreaker-peers-check.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    set +e
    "$here/exim.sh" stop "$work/exim" 2>/dev/null
    "$here/sendmail.sh" stop "$work/sendmail" 2>/dev/null
    "$here/postfix-sasl.sh" stop "$work/postfix" 2>/dev/null
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
pass() { echo "ok: $*"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    fail "$what (after ${limit}s)"
}

# A sink that keeps each message as a file, and a tap in front of it.
sink_port=$(free_port)
tap_port=$(free_port)
mkdir -p "$work/dump"
chown nobody "$work/dump"
smtp-sink -u nobody -d "$work/dump/%M." "127.0.0.1:$sink_port" 1000 &
pids+=($!)
start_tap() {
    : >"$work/tap.log"
    python3 "$here/tap.py" "$tap_port" "$sink_port" "$work/tap.log" &
    tap_pid=$!
    pids+=("$tap_pid")
    wait_port "$tap_port" tap "$work/tap.log"
}
stop_tap() { kill "$tap_pid"; wait "$tap_pid" 2>/dev/null || true; }
dumped() { find "$work/dump" -type f | wc -l; }
dumped_at_least() { [ "$(dumped)" -ge "$1" ]; }
wait_port "$sink_port" smtp-sink /dev/null

# summarize_tap [N]: what each client sent after the final dot, counted, and in how many
# connections that sent anything (the chunk that holds the end of the data, and what came next
# in a chunk of its own). With N, fails unless N chunks end with the dot and QUIT together.
summarize_tap() {
    python3 - "$work/tap.log" "${1:-}" <<'EOF'
import ast, collections, sys
ends = collections.Counter()
conns = set()
after_dot = {}
for line in open(sys.argv[1]):
    _, conn, direction, data = line.split(" ", 3)
    data = ast.literal_eval(data)
    if direction != "C>S":
        continue
    if data != b"<closed>":
        conns.add(conn)
    if data == b"<closed>":
        if after_dot.pop(conn, False):
            ends["after the reply to the dot: closed without QUIT"] += 1
    elif b"\r\n.\r\n" in data:
        ends["ends with " + repr(data[data.rindex(b"\r\n.\r\n"):])] += 1
        after_dot[conn] = data.endswith(b"\r\n.\r\n")
    elif after_dot.pop(conn, False):
        ends["after the reply to the dot: " + repr(data)] += 1
print(f"    {len(conns)} connections")
for text, n in ends.most_common():
    print(f"    {n} x {text}")
if sys.argv[2]:
    together = ends["ends with " + repr(b"\r\n.\r\nQUIT\r\n")]
    if together != int(sys.argv[2]):
        sys.exit(f"    expected {sys.argv[2]} chunks ending with the dot and QUIT, saw {together}")
EOF
}

echo "== Exim as a sender: 20 messages through a tap into smtp-sink"
exim_port=$(free_port)
start_tap
"$here/exim.sh" start "$work/exim" "$exim_port" "$tap_port"
before=$(dumped)
started=$(now_ms)
smtp-source -s 2 -m 20 -l 2048 -f a@corp.test -t b@corp.test "127.0.0.1:$exim_port"
wait_for 20 "exim delivered 20 messages" dumped_at_least $((before + 20))
echo "    20 messages in $(($(now_ms) - started)) ms"
exim_queue_empty() { [ "$("$here/exim.sh" queue "$work/exim")" = 0 ]; }
wait_for 5 "exim queue empty" exim_queue_empty
[ "$("$here/exim.sh" delivered "$work/exim")" = 20 ] || fail "exim delivered count"
[ -z "$("$here/exim.sh" failures "$work/exim")" ] || fail "exim failures: $("$here/exim.sh" failures "$work/exim")"
summarize_tap 20 || fail "exim did not send the dot and QUIT together in each of 20 connections"
pass "exim relayed 20 messages, each ending with .\\r\\nQUIT\\r\\n in one chunk"
stop_tap

echo "== Exim defers while its relay is down, and delivers once it is back"
swaks --server "127.0.0.1:$exim_port" --from a@corp.test --to late@corp.test >/dev/null
wait_for 10 "exim logs a defer" sh -c "'$here/exim.sh' failures '$work/exim' | grep -q ' == late@corp.test'"
[ "$("$here/exim.sh" queue "$work/exim")" = 1 ] || fail "exim queue should hold the deferred message"
"$here/exim.sh" failures "$work/exim" | sed 's/^/    /' | head -2
before=$(dumped)
start_tap
wait_for 20 "exim retried the deferred message" dumped_at_least $((before + 1))
pass "exim deferred (==) and then delivered on its own"
stop_tap
"$here/exim.sh" stop "$work/exim"

echo "== Postfix as a sender (private instance), through a tap into smtp-sink"
pf_port=$(free_port)
for cache in "" "smtp_connection_cache_destinations = [127.0.0.1]:$tap_port"; do
    start_tap
    before=$(dumped)
    POSTFIX_MAIN_CF="smtpd_relay_restrictions = permit_mynetworks, reject
$cache" "$here/postfix-sasl.sh" start "$work/postfix" "$pf_port" "$tap_port" u p >/dev/null
    smtp-source -s 2 -m 20 -l 2048 -f a@corp.test -t b@corp.test "127.0.0.1:$pf_port"
    wait_for 30 "postfix relayed 20 messages" dumped_at_least $((before + 20))
    echo "  with ${cache:-the default (smtp_connection_cache_on_demand)}:"
    summarize_tap
    stop_tap
done
"$here/postfix-sasl.sh" stop "$work/postfix"
pass "postfix relayed 2 x 20 messages"

echo "== Postfix with SASL: STARTTLS + AUTH, relays only for the authenticated"
pf_port=$(free_port)
"$here/postfix-sasl.sh" start "$work/postfix" "$pf_port" "$sink_port" alice 'open sesame'
ca=$work/postfix/tls/ca.crt
before=$(dumped)
out=$(swaks --server "127.0.0.1:$pf_port" --tls --tls-verify --tls-ca-path "$ca" --auth PLAIN \
    --auth-user alice --auth-password 'open sesame' --from alice@corp.test --to x@corp.test 2>&1) ||
    fail "TLS + AUTH PLAIN: $out"
grep -q '^<~  235 ' <<<"$out" || fail "no 235 after AUTH: $out"
wait_for 10 "postfix relayed the authenticated message" dumped_at_least $((before + 1))
grep -lq 'Authenticated sender: alice@submission.corp.test' "$work/dump"/* ||
    fail "no Authenticated sender header at the sink"
pass "TLS (verified against ca.crt) + AUTH PLAIN: 235, relayed, Authenticated sender in Received"
for mech in LOGIN CRAM-MD5; do
    swaks --server "127.0.0.1:$pf_port" --tls --auth "$mech" --auth-user alice \
        --auth-password 'open sesame' --from alice@corp.test --to x@corp.test >/dev/null 2>&1 ||
        fail "AUTH $mech"
done
pass "AUTH LOGIN and CRAM-MD5 (multi-step) succeed"
out=$(swaks --server "127.0.0.1:$pf_port" --auth PLAIN --auth-user alice \
    --auth-password 'open sesame' --from alice@corp.test --to x@corp.test 2>&1) &&
    fail "AUTH without TLS succeeded"
grep -q 'Host did not advertise authentication' <<<"$out" || fail "AUTH offered without TLS: $out"
pass "no AUTH offered before STARTTLS"
out=$(swaks --server "127.0.0.1:$pf_port" --tls --auth PLAIN --auth-user alice \
    --auth-password wrong --from alice@corp.test --to x@corp.test 2>&1) &&
    fail "a wrong password was accepted"
grep -q '^<~\* 535 ' <<<"$out" || fail "wrong password, no 535: $out"
pass "wrong password: $(grep '^<~\* 535 ' <<<"$out" | cut -c5-)"
out=$(swaks --server "127.0.0.1:$pf_port" --tls --from alice@corp.test --to x@corp.test 2>&1) &&
    fail "relayed without AUTH"
grep -q '^<~\* 554 5.7.1 ' <<<"$out" || fail "no 554 without AUTH: $out"
pass "no AUTH, no relay: $(grep '^<~\* 554 ' <<<"$out" | cut -c5-)"
"$here/postfix-sasl.sh" stop "$work/postfix"

echo "== Sendmail as a milter client"
sm_port=$(free_port)
milter_port=$(free_port)
if [ -z "$binary" ]; then
    # Nothing listens on milter_port: with F=T, Sendmail must tempfail the message.
    "$here/sendmail.sh" start "$work/sendmail" "$sm_port" "$sink_port" "$milter_port"
    out=$(swaks --server "127.0.0.1:$sm_port" --from a@corp.test --to b@corp.test 2>&1) &&
        fail "sendmail accepted mail with its milter down: $out"
    grep -q '^<\*\* 451 4.3.2' <<<"$out" || fail "sendmail with its milter down: $out"
    pass "milter down: $(grep '^<\*\* 451' <<<"$out" | cut -c5-) (no stormbreaker binary for the full check)"
else
    mkdir -p "$work/sb"
    cat >"$work/sb/policy.toml" <<EOF
[milter]
listen = "127.0.0.1:$milter_port"
[quarantine]
dir = "$work/sb/quarantine"
[policy]
wide_audience = 100
trip_replies = 2
action = "quarantine"
[[lists]]
address = "all@corp.test"
members = 5000
EOF
    "$binary" run --config "$work/sb/policy.toml" >"$work/sb/log" 2>&1 &
    pids+=($!)
    wait_port "$milter_port" stormbreaker "$work/sb/log"
    "$here/sendmail.sh" start "$work/sendmail" "$sm_port" "$sink_port" "$milter_port"
    before=$(dumped)
    for i in 1 2 3 4; do
        swaks --server "127.0.0.1:$sm_port" --from "u$i@corp.test" --to all@corp.test \
            --header "Subject: Re: lunch" --header "In-Reply-To: <lunch@corp.test>" \
            --header "References: <lunch@corp.test>" >/dev/null
    done
    wait_for 10 "sendmail delivered the two replies before the breaker" dumped_at_least $((before + 2))
    held=$("$here/sendmail.sh" held-ids "$work/sendmail")
    [ "$(wc -l <<<"$held")" = 2 ] || fail "sendmail should hold 2 replies, holds: $held"
    "$here/sendmail.sh" held "$work/sendmail" | grep QUARANTINE | sed 's/^ */    /'
    pass "stormbreaker's milter had Sendmail deliver 2 replies and quarantine 2"
    "$here/sendmail.sh" release "$work/sendmail" "$(head -1 <<<"$held")"
    wait_for 10 "the released message reaches the sink" dumped_at_least $((before + 3))
    pass "released one held message: delivered"
fi
"$here/sendmail.sh" stop "$work/sendmail"
echo "all peer checks passed"
