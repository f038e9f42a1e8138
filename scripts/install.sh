#!/usr/bin/env bash
# Installs Farside as systemd services on this machine, or removes them.
#
#   scripts/install.sh [--prefix /usr/local] [--binary PATH]   build (unless --binary) and install
#   scripts/install.sh --uninstall [--purge]                  remove units and binary (--purge: also
#                                                             /etc/farside, /var/lib/farside, the user)
#
# Installs: PREFIX/bin/farside; /etc/systemd/system/farside-coordinator.service and
# farside-expert@.service; /etc/farside/farside.yaml (the example, only if none is there) and
# /etc/farside/keys/; the system user and group 'farside'. Starts nothing: edit the config, make
# keys (farside keys generate), then `systemctl enable --now ...` (README, "Deploy on several machines").
# DESTDIR=DIR installs into a staging root instead (no user, no systemctl), for packaging and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local binary="" uninstall=0 purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    *) echo "usage: $0 [--prefix DIR] [--binary PATH] | --uninstall [--purge]" >&2; exit 2 ;;
  esac
done
root=${DESTDIR:-}
units=$root/etc/systemd/system
have_systemd=0
if [ -z "$root" ] && [ -d /run/systemd/system ]; then have_systemd=1; fi

if [ "$uninstall" -eq 1 ]; then
  if [ "$have_systemd" -eq 1 ]; then
    systemctl disable --now farside-coordinator.service 2>/dev/null || true
    for u in $(systemctl list-units --all --plain --no-legend 'farside-expert@*' | awk '{print $1}'); do
      systemctl disable --now "$u" || true
    done
  fi
  rm -f "$units/farside-coordinator.service" "$units/farside-expert@.service" "$root$prefix/bin/farside"
  rm -rf "$root$prefix/share/doc/farside"
  [ "$have_systemd" -eq 1 ] && systemctl daemon-reload
  if [ "$purge" -eq 1 ]; then
    rm -rf "$root/etc/farside" "$root/var/lib/farside"
    if [ -z "$root" ] && id farside >/dev/null 2>&1; then userdel farside; fi
  fi
  echo "farside uninstalled"
  exit 0
fi

if [ -z "$binary" ]; then
  scripts/setup.sh
  swift build -c release --product farside
  binary=.build/release/farside
fi
[ -x "$binary" ] || { echo "error: $binary is not an executable" >&2; exit 1; }
install -D -m 0755 "$binary" "$root$prefix/bin/farside"
install -D -m 0644 README.md "$root$prefix/share/doc/farside/README.md"
for u in deploy/systemd/farside-coordinator.service deploy/systemd/farside-expert@.service; do
  sed "s#/usr/local/bin/farside#$prefix/bin/farside#g; s#/usr/local/share/doc#$prefix/share/doc#g" "$u" > "$u.tmp"
  install -D -m 0644 "$u.tmp" "$units/$(basename "$u")"
  rm -f "$u.tmp"
done
install -d -m 0750 "$root/etc/farside" "$root/etc/farside/keys"
[ -e "$root/etc/farside/farside.yaml" ] || install -m 0640 deploy/farside.yaml "$root/etc/farside/farside.yaml"
if [ -z "$root" ]; then
  id farside >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/farside --no-create-home --shell /usr/sbin/nologin farside
  chgrp -R farside /etc/farside
fi
[ "$have_systemd" -eq 1 ] && systemctl daemon-reload
echo "farside installed: $prefix/bin/farside, units in $units, config /etc/farside/farside.yaml"
echo "next: farside keys generate --out /etc/farside/keys --name coordinator (and one per node), edit the config, then"
echo "      systemctl enable --now farside-coordinator   /   systemctl enable --now farside-expert@NODE"
