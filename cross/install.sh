#!/bin/sh
# Installs flotilla from this bundle and starts it as a systemd service:
# a node that joins the master ADDR with the join token T (the default), or
# a master (--role master).
#
#   sh install.sh --master ADDR --token T [--name NAME] [--args "FLAGS"]
#   FLOTILLA_MASTER=ADDR FLOTILLA_TOKEN=T sh install.sh
#   sh install.sh --role master [--args "--listen 0.0.0.0:7443 ..."]
#
# Options (each also read from the environment variable named after it):
#   --master ADDR   a master's host:port             FLOTILLA_MASTER
#   --token T       join token (`flotilla token create`) FLOTILLA_TOKEN
#   --name NAME     the node's name [the host name]    FLOTILLA_NAME
#   --args "FLAGS"  more `flotilla node|master` flags  FLOTILLA_ARGS
#   --role ROLE     node or master [node]              FLOTILLA_ROLE
#   --root DIR      install under DIR, do not touch systemd (images, tests);
#                   without --master and --token, only the binary and units
#   --no-start      install and enable, but do not start
#
# Writes BINDIR/flotilla (/usr/local/bin), the systemd units, and
# /etc/flotilla/ROLE.env (owner-only: it holds the token). Run it again to
# change the settings or upgrade the binary; uninstall.sh undoes it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
master=${FLOTILLA_MASTER:-}
token=${FLOTILLA_TOKEN:-}
name=${FLOTILLA_NAME:-}
args=${FLOTILLA_ARGS:-}
role=${FLOTILLA_ROLE:-node}
root=${FLOTILLA_ROOT:-}
start=1

die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --master) [ $# -ge 2 ] || die "--master needs an address, e.g. 10.0.0.1:7443"; master=$2; shift 2 ;;
        --token) [ $# -ge 2 ] || die "--token needs the token from \`flotilla token create\`"; token=$2; shift 2 ;;
        --name) [ $# -ge 2 ] || die "--name needs a node name"; name=$2; shift 2 ;;
        --args) [ $# -ge 2 ] || die "--args needs flags, quoted"; args=$2; shift 2 ;;
        --role) [ $# -ge 2 ] || die "--role needs node or master"; role=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
        --no-start) start=0; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case $role in
    node|master) ;;
    *) die "--role $role: give node or master" ;;
esac
# Values go into an environment file that systemd reads: no quotes,
# newlines or spaces where one value is expected.
for v in "$master" "$token" "$name"; do
    case $v in
        *[!A-Za-z0-9.:_+/=~-]*) die "\"$v\" has characters an address, token or name never has" ;;
    esac
done
case $args in *[\"\'\\\$\`]*|*'
'*) die "--args: give plain flags, without quotes, \$, backslashes or newlines" ;; esac

bin="$here/bin/flotilla"
[ -x "$bin" ] || die "$bin is missing: run install.sh from the unpacked bundle"
state="$root/var/lib/flotilla"
# Under --root with neither master nor token: the binary and units only,
# for an image whose node is configured at its first boot (cross/image.sh).
units_only=0
[ "$role" = node ] && [ -n "$root" ] && [ -z "$master$token" ] && units_only=1
if [ "$role" = node ] && [ $units_only = 0 ]; then
    [ -n "$master" ] || die "give the master: --master ADDR or FLOTILLA_MASTER=ADDR (e.g. 10.0.0.1:7443)"
    # A node that joined already has its certificate: no token needed.
    if [ -z "$token" ] && [ ! -e "$state/node/credentials.yaml" ]; then
        die "give a join token: --token T or FLOTILLA_TOKEN=T (from \`flotilla token create\` on a master)"
    fi
fi

bindir=/usr/local/bin
umask 022
mkdir -p "$root$bindir" "$root/etc/systemd/system" "$root/etc/flotilla"
# Replaced by a rename, so a running flotilla keeps its old binary.
cp "$bin" "$root$bindir/.flotilla.new"
chmod 0755 "$root$bindir/.flotilla.new"
mv -f "$root$bindir/.flotilla.new" "$root$bindir/flotilla"
for unit in flotilla-node.service flotilla-master.service; do
    sed "s#@BINDIR@#$bindir#g" "$here/systemd/$unit" > "$root/etc/systemd/system/$unit"
    chmod 0644 "$root/etc/systemd/system/$unit"
done

env_file="$root/etc/flotilla/$role.env"
settings=$env_file
umask 077
if [ $units_only = 1 ]; then
    settings="no settings yet (no --master): run install.sh again with them"
elif [ "$role" = node ]; then
    flags="--master $master"
    [ -n "$name" ] && flags="$flags --name $name"
    [ -n "$args" ] && flags="$flags $args"
    {
        echo "# Written by flotilla's install.sh; read by flotilla-node.service."
        echo "FLOTILLA_NODE_ARGS=$flags"
        [ -n "$token" ] && echo "FLOTILLA_TOKEN=$token"
    } > "$env_file.new"
else
    flags=${args:---listen 0.0.0.0:7443}
    {
        echo "# Written by flotilla's install.sh; read by flotilla-master.service."
        echo "FLOTILLA_MASTER_ARGS=$flags"
        [ -n "$token" ] && echo "FLOTILLA_TOKEN=$token"
    } > "$env_file.new"
fi
if [ $units_only = 0 ]; then
    chmod 0600 "$env_file.new"
    mv -f "$env_file.new" "$env_file"
fi
echo "installed $bindir/flotilla ($("$bin" --version 2>/dev/null || echo "for another architecture")), flotilla-$role.service, $settings"

if [ -n "$root" ]; then
    echo "under $root: systemd left alone; the service starts at the system's first boot if enabled there"
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
    ln -sf "/etc/systemd/system/flotilla-$role.service" \
        "$root/etc/systemd/system/multi-user.target.wants/flotilla-$role.service"
    exit 0
fi
command -v systemctl >/dev/null || die "no systemctl here: start \`$bindir/flotilla $role\` by other means"
systemctl daemon-reload
if [ $start = 1 ]; then
    systemctl enable "flotilla-$role.service"
    systemctl restart "flotilla-$role.service"
    echo "flotilla-$role is running: \`systemctl status flotilla-$role\`, \`journalctl -u flotilla-$role\`"
else
    systemctl enable "flotilla-$role.service"
fi
