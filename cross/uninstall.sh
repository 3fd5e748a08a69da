#!/bin/sh
# Stops and removes what install.sh installed: the services, their units,
# the binary and /etc/flotilla. The state in /var/lib/flotilla (a node's
# certificate and modules, a master's store) stays unless --purge.
#
#   sh uninstall.sh [--purge] [--root DIR]
set -eu

root=${FLOTILLA_ROOT:-}
purge=0
while [ $# -gt 0 ]; do
    case $1 in
        --purge) purge=1; shift ;;
        --root) [ $# -ge 2 ] || { echo "uninstall.sh: --root needs a directory" >&2; exit 2; }; root=$2; shift 2 ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$root" ] && command -v systemctl >/dev/null; then
    for role in node master; do
        systemctl disable --now "flotilla-$role.service" 2>/dev/null || true
    done
fi
for role in node master; do
    rm -f "$root/etc/systemd/system/flotilla-$role.service" \
        "$root/etc/systemd/system/multi-user.target.wants/flotilla-$role.service"
done
rm -f "$root/usr/local/bin/flotilla"
rm -rf "$root/etc/flotilla"
[ -z "$root" ] && command -v systemctl >/dev/null && systemctl daemon-reload
if [ $purge = 1 ]; then
    rm -rf "$root/var/lib/flotilla"
    echo "flotilla removed, with its state"
else
    echo "flotilla removed; its state stays in $root/var/lib/flotilla (--purge removes it)"
fi
