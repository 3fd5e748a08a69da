#!/bin/sh
# Configures this device's flotilla node from CONF (flotilla.conf on the
# boot partition), once: while /etc/flotilla/node.env does not exist.
# Run by flotilla-firstboot.service before flotilla-node starts. What is
# wrong with the file is written to flotilla-error.txt beside it (a
# device without a screen is read by taking its card out) and to the
# journal; fix the file and boot again. FLOTILLA_SYSROOT=DIR configures
# the system under DIR instead of this one (tests).
set -eu

conf=${1:-/boot/firmware/flotilla.conf}
dir=$(dirname "$conf")
errors=$dir/flotilla-error.txt
sys=${FLOTILLA_SYSROOT:-}
lib=$sys/usr/local/lib/flotilla

fail() {
    echo "flotilla first boot: $*" >&2
    { echo "flotilla could not join at $(date -u '+%Y-%m-%d %H:%M UTC'):"; echo "$*"; } > "$errors.new" &&
        mv -f "$errors.new" "$errors" && sync
    exit 1
}

if [ -e "$sys/etc/flotilla/node.env" ]; then
    echo "flotilla first boot: the node is configured already (/etc/flotilla/node.env)"
    exit 0
fi

master= token= name= args=
# KEY=VALUE lines; a value may be quoted and followed by a # comment; an
# editor's CR line ends are dropped.
while IFS= read -r line || [ -n "$line" ]; do
    line=$(printf '%s' "$line" | tr -d '\r')
    case $line in ''|'#'*) continue ;; esac
    key=${line%%=*}
    [ "$key" != "$line" ] || fail "$conf: \"$line\" is not KEY=VALUE"
    value=${line#*=}
    # A comment may follow a value: no value has a '#'.
    value=${value%%[[:space:]]#*}
    value=$(printf '%s' "$value" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' \
        -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/")
    case $(printf '%s' "$key" | tr -d '[:space:]') in
        FLOTILLA_MASTER) master=$value ;;
        FLOTILLA_TOKEN) token=$value ;;
        FLOTILLA_NAME) name=$value ;;
        FLOTILLA_ARGS) args=$value ;;
        *) fail "$conf: unknown setting $key (FLOTILLA_MASTER, FLOTILLA_TOKEN, FLOTILLA_NAME and FLOTILLA_ARGS are read)" ;;
    esac
done < "$conf"

[ -n "$master" ] || fail "$conf: FLOTILLA_MASTER is empty: give a master's host:port, e.g. FLOTILLA_MASTER=192.168.1.10:7443"
[ -n "$token" ] || fail "$conf: FLOTILLA_TOKEN is empty: give a join token from \`flotilla token create\`"
if [ -z "$name" ]; then
    name=flotilla-$(head -c 8 "$sys/etc/machine-id")
fi
case $name in
    *[!a-z0-9-]*|-*|*-) fail "$conf: FLOTILLA_NAME=$name: a node name has lower-case letters, digits and inner dashes only" ;;
esac
[ ${#name} -le 63 ] || fail "$conf: FLOTILLA_NAME=$name: at most 63 characters"

# The node's name is the device's host name too.
echo "$name" > "$sys/etc/hostname"
sed -i "/^127\.0\.1\.1[[:space:]]/d" "$sys/etc/hosts"
echo "127.0.1.1	$name" >> "$sys/etc/hosts"
[ -n "$sys" ] || hostname "$name" || true

# install.sh validates the values and writes /etc/flotilla/node.env.
if ! out=$("$lib/install.sh" --root "${sys:-/}" --master "$master" --token "$token" --name "$name" --args "$args" 2>&1); then
    fail "$out"
fi
echo "$out"

# The token is spent: it leaves the card (anyone can read a FAT partition).
sed -e "s/^\([[:space:]]*FLOTILLA_TOKEN[[:space:]]*=\).*/# The join token was used at the first boot, $(date -u '+%Y-%m-%d %H:%M UTC').\n\1/" \
    "$conf" > "$conf.new"
mv -f "$conf.new" "$conf"
rm -f "$errors"
sync
echo "flotilla first boot: node $name joins $master"
