#!/usr/bin/env bash
# Installs or unpacks what the real MTA peers of the integration tests and benches need, when it is
# missing (see README.md beside this file). Idempotent: a run that finds everything in place makes
# no apt call and takes a few milliseconds. Needs root.
#
# Debian's exim4 and sendmail packages conflict with the installed Postfix, so their .debs are
# unpacked (dpkg -x) into $STORMBREAKER_PEERS (default /var/tmp/stormbreaker-peers) instead of
# being installed; only the libraries they link to, SASL (Cyrus: saslpasswd2 and its plugins),
# Postfix, swaks and openssl are installed as ordinary packages.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/peers/common.sh
. "$here/common.sh"

if [ "$(id -u)" != 0 ]; then
    die "install.sh must run as root (apt-get, useradd, /usr/sbin/exim4)"
fi

mkdir -p "$PEERS_CACHE"
# Tests run in parallel and may all call this at once: one installer at a time.
exec 9>"$PEERS_CACHE/install.lock"
flock 9

installed=()
updated=no

apt_update_once() {
    [ "$updated" = yes ] && return
    echo "install.sh: apt-get update" >&2
    apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
    updated=yes
}

package_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# apt_install PACKAGE...: installs, in one apt-get call, those not installed yet.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        package_installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    apt_update_once
    echo "install.sh: apt-get install ${missing[*]}" >&2
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
        --no-install-recommends "${missing[@]}" >/dev/null 2>"$PEERS_CACHE/apt.err" ||
        { cat "$PEERS_CACHE/apt.err" >&2; die "apt-get install ${missing[*]} failed"; }
    installed+=("${missing[@]}")
}

# unpack NAME PACKAGE...: downloads the packages' .debs and unpacks them all into
# $PEERS_CACHE/NAME, unless a previous run finished doing so. The tree is built aside and
# renamed into place, so an interrupted run leaves nothing half-unpacked behind.
unpack() {
    local name=$1 dest="$PEERS_CACHE/$1" work deb
    shift
    [ -f "$dest/.unpacked" ] && return
    apt_update_once
    work=$(mktemp -d "$PEERS_CACHE/.$name.XXXXXX")
    # apt downloads as user _apt, which must be able to write there.
    chown _apt "$work" 2>/dev/null || true
    echo "install.sh: apt-get download $* -> $dest" >&2
    (cd "$work" && apt-get download -q "$@" >/dev/null)
    mkdir "$work/root"
    for deb in "$work"/*.deb; do
        dpkg -x "$deb" "$work/root"
        echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)" >>"$work/root/.unpacked"
    done
    rm -rf "$dest"
    mv "$work/root" "$dest"
    rm -rf "$work"
    installed+=("$name(unpacked: $*)")
}

# no_missing_libraries BINARY: fails naming the libraries the dynamic loader cannot find.
no_missing_libraries() {
    local missing
    missing=$(ldd "$1" | grep 'not found' || true)
    [ -z "$missing" ] || die "$1 lacks libraries:"$'\n'"$missing"
}

# Installed as ordinary packages, in one apt call: Postfix (its default instance stays
# unconfigured; every test runs a private one), swaks to drive the peers, openssl for ca.sh,
# Cyrus SASL for postfix-sasl.sh (saslpasswd2 writes a private sasldb that Postfix's smtpd reads
# through a private smtpd.conf; see README.md), and the libraries the unpacked Exim (libidn12)
# and Sendmail (libwrap0, liblockfile1) miss beside Postfix.
apt_install postfix swaks openssl sasl2-bin libsasl2-modules libsasl2-modules-db \
    libidn12 libwrap0 liblockfile1

# Exim 4: the daemon and its base files, unpacked, run as the user it was built for.
unpack exim exim4-daemon-light exim4-base
if ! getent passwd Debian-exim >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin Debian-exim
    installed+=("user Debian-exim")
fi
# Exim re-executes itself through its compiled-in path for every delivery.
if [ ! -e /usr/sbin/exim4 ] || { [ -L /usr/sbin/exim4 ] && [ "$(readlink /usr/sbin/exim4)" != "$EXIM_BIN" ]; }; then
    ln -sfn "$EXIM_BIN" /usr/sbin/exim4
    installed+=("link /usr/sbin/exim4 -> $EXIM_BIN")
fi
no_missing_libraries "$EXIM_BIN"

# Sendmail 8.17, its m4 macros and m4 itself, unpacked.
unpack sendmail sendmail-bin sendmail-base sendmail-cf m4
no_missing_libraries "$SENDMAIL_BIN"
no_missing_libraries "$PEERS_M4"

if [ ${#installed[@]} -eq 0 ]; then
    echo "install.sh: all peers present (cache $PEERS_CACHE)"
else
    echo "install.sh: installed:"
    printf '  %s\n' "${installed[@]}"
fi
echo "  exim:     $("$EXIM_BIN" -C /dev/null -bV 2>/dev/null | sed -n 's/^\(Exim version [^ ]*\).*/\1/p')"
echo "  sendmail: $(sed -n 's/^sendmail-bin //p' "$PEERS_CACHE/sendmail/.unpacked")"
echo "  postfix:  $(postconf -d -h mail_version 2>/dev/null)"
echo "  sasl:     cyrus $(dpkg-query -W -f='${Version}' sasl2-bin)"
