#!/usr/bin/env bash
# A test certificate authority and a server certificate it signed, for the peers' STARTTLS (and
# for a client, such as stormbreaker's upstream leg, that verifies them against the CA).
#
#   ca.sh DIR [NAME...]
#
# Writes into DIR (PEM, EC P-256):
#   ca.crt                  the CA's certificate: the trust anchor to give the verifying side
#   ca.key                  its key
#   server.crt, server.key  the server's certificate (subjectAltName 127.0.0.1, localhost and
#                           each NAME: IP addresses as iPAddress, others as dNSName) and key
#   server-chain.crt        server.crt then ca.crt, for servers that send the whole chain
# Idempotent: an existing CA is kept; the server certificate is made again only when missing or
# when the NAMEs differ from the last run's. Prints DIR.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: ca.sh DIR [NAME...]" >&2; exit 2; }
command -v openssl >/dev/null || { echo "ca.sh: openssl is missing: run scripts/peers/install.sh" >&2; exit 1; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)
shift

san="IP:127.0.0.1,DNS:localhost"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
        san+=",IP:$name"
    else
        san+=",DNS:$name"
    fi
done
cn=${1:-localhost}

# Made in a scratch folder and renamed into place: a run that fails half-way (or runs beside
# another) never leaves a key that does not match its certificate.
work=$(mktemp -d "$dir/.ca.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$work/ca.key" -out "$work/ca.crt" -days 3650 \
        -subj "/O=stormbreaker tests/CN=stormbreaker test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>"$work/err" ||
        { cat "$work/err" >&2; exit 1; }
    chmod 600 "$work/ca.key"
    mv "$work/ca.key" "$dir/ca.key"
    mv "$work/ca.crt" "$dir/ca.crt"
    rm -f "$dir/server.names"
fi

if [ ! -s "$dir/server.crt" ] || [ ! -s "$dir/server.key" ] ||
    [ "$(cat "$dir/server.names" 2>/dev/null)" != "$san" ]; then
    cat >"$work/ext.cnf" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=$cn" 2>"$work/err" ||
        { cat "$work/err" >&2; exit 1; }
    openssl x509 -req -in "$work/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -extfile "$work/ext.cnf" \
        -out "$work/server.crt" 2>"$work/err" ||
        { cat "$work/err" >&2; exit 1; }
    chmod 600 "$work/server.key"
    cat "$work/server.crt" "$dir/ca.crt" >"$work/server-chain.crt"
    mv "$work/server.key" "$dir/server.key"
    mv "$work/server.crt" "$dir/server.crt"
    mv "$work/server-chain.crt" "$dir/server-chain.crt"
    echo "$san" >"$dir/server.names"
fi
echo "$dir"
