#!/usr/bin/env bash
# A private Postfix instance that offers STARTTLS and SASL AUTH, and relays only for
# authenticated clients: the upstream of the submission path (a client does STARTTLS + AUTH
# through stormbreaker's proxy, which relays AUTH to this Postfix; Postfix checks the password).
# /etc/postfix is never touched: everything lives in DIR.
#
#   postfix-sasl.sh start DIR SMTP_PORT RELAY_PORT USER PASSWORD   (re)starts it; returns once it listens
#   postfix-sasl.sh stop DIR                                        stops it (nothing to do when not running)
#   postfix-sasl.sh queue DIR                                       its queue as JSON lines (postqueue -j)
#
# On 127.0.0.1:SMTP_PORT it offers STARTTLS with a certificate from a test CA (ca.sh: the CA is
# DIR/tls/ca.crt, for a client that verifies the server) and, inside TLS only
# (smtpd_tls_auth_only), AUTH PLAIN LOGIN CRAM-MD5 (SASL_MECHS overrides) against a private Cyrus
# sasldb holding USER/PASSWORD (USER "name@realm" is stored under that realm; a plain "name"
# under submission.corp.test, the realm Postfix gives a login without one). Mail from an
# authenticated client is relayed to 127.0.0.1:RELAY_PORT; anything else gets 554 5.7.1
# "Recipient address rejected: Access denied". Log: DIR/maillog. POSTFIX_MAIN_CF holds more
# main.cf lines, the last definition winning (for example "smtpd_authorized_xclient_hosts =
# 127.0.0.0/8"). DIR and its parents must be traversable by the postfix user. Needs root and
# scripts/peers/install.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/peers/common.sh
. "$here/common.sh"

usage() {
    sed -n 's/^#   \(postfix-sasl.sh .*\)/  \1/p' "$0" >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
set_dir "$cmd" "$2"
conf=$dir/conf
realm=submission.corp.test

# stop_postfix: stops the instance and waits for its master to go, so its port is free.
stop_postfix() {
    local pid
    [ -f "$conf/main.cf" ] || return 0
    pid=$(pid_alive "$dir/queue/pid/master.pid") || return 0
    postfix -c "$conf" stop >/dev/null 2>&1 || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    die "postfix master $pid (in $dir) did not stop within 10 s"
}

start() {
    local smtp_port=$1 relay_port=$2 user=$3 password=$4 login started
    need_ports "$smtp_port" "$relay_port"
    started=$(now_ms)
    need_file /usr/sbin/saslpasswd2
    stop_postfix
    port_free "$smtp_port"
    chmod 755 "$dir"
    traversable_by postfix "$dir"
    mkdir -p "$conf/sasl" "$dir/queue" "$dir/data" "$dir/sasl"
    chown postfix:postfix "$dir/data"
    "$here/ca.sh" "$dir/tls" localhost >/dev/null

    # The sasldb smtpd reads (as user postfix), made afresh so that it holds USER only.
    if [[ $user == *@* ]]; then
        login=${user%@*}
        realm=${user##*@}
    else
        login=$user
    fi
    rm -f "$dir/sasl/sasldb2"
    printf '%s' "$password" | saslpasswd2 -f "$dir/sasl/sasldb2" -p -c -u "$realm" "$login"
    chown root:postfix "$dir/sasl/sasldb2"
    chmod 640 "$dir/sasl/sasldb2"
    # Debian's Postfix reads smtpd.conf from $config_directory/sasl whatever
    # cyrus_sasl_config_path says: the instance's own conf/sasl.
    cat >"$conf/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $dir/sasl/sasldb2
mech_list: ${SASL_MECHS:-PLAIN LOGIN CRAM-MD5}
EOF

    cat >"$conf/main.cf" <<EOF
# Written by scripts/peers/postfix-sasl.sh.
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = submission.corp.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$relay_port
alias_maps =
alias_database =
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
# Cyrus SASL inside smtpd: its smtpd.conf is in $conf/sasl, its sasldb in $dir/sasl.
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $conf/sasl
smtpd_sasl_local_domain = submission.corp.test
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
# The Received header names the authenticated sender: proof that AUTH reached Postfix.
smtpd_sasl_authenticated_header = yes
# Relaying for authenticated clients only; 127.0.0.1 (the proxy) gets nothing for free.
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_chain_files = $dir/tls/server.key, $dir/tls/server-chain.crt
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
${POSTFIX_MAIN_CF:-}
EOF
    sed "s/^smtp \+inet .*/127.0.0.1:$smtp_port inet n - n - - smtpd/" /etc/postfix/master.cf >"$conf/master.cf"
    # No chroot anywhere: a chrooted daemon would miss files this instance never copied in.
    postconf -c "$conf" -F '*/*/chroot = n'

    if ! postfix -c "$conf" start >"$dir/start.out" 2>&1; then
        cat "$dir/start.out" >&2
        [ -f "$dir/maillog" ] && tail -20 "$dir/maillog" >&2
        die "postfix -c $conf start failed"
    fi
    wait_port "$smtp_port" "postfix-sasl, $dir" "$dir/maillog"
    echo "postfix-sasl: 127.0.0.1:$smtp_port -> 127.0.0.1:$relay_port, AUTH for $login@$realm, CA $dir/tls/ca.crt, started in $(($(now_ms) - started)) ms ($dir)"
}

case $cmd in
start)
    [ $# -eq 6 ] || usage
    start "$3" "$4" "$5" "$6"
    ;;
stop)
    stop_postfix
    ;;
queue)
    need_file "$conf/main.cf"
    postqueue -c "$conf" -j
    ;;
*)
    usage
    ;;
esac
