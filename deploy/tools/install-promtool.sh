#!/usr/bin/env bash
# Install `promtool` (Prometheus' rule checker and rule unit-test runner) into DEST (default
# .venv/bin), for tests/unit/test_alerts.py: `promtool check rules` and `promtool test rules`
# on deploy/alerts.yml.
#
# It comes from Debian's `prometheus` package (2.42 on bookworm), which is NOT installed: the
# package would add a system user, a service and 15 JavaScript packages for its web UI. The .deb
# (19 MB) is fetched with `apt-get download` (verified by apt against the signed archive index)
# and only usr/bin/promtool (a static Go binary, 48 MB) is unpacked from it.
# Idempotent: does nothing when DEST/promtool already runs. Needs apt-get and dpkg-deb.
set -euo pipefail

DEST=${1:-.venv/bin}
SUDO=${SUDO:-}

if [ -x "$DEST/promtool" ] && "$DEST/promtool" --version >/dev/null 2>&1; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "install-promtool: no apt-get on this machine" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
  $SUDO apt-get update -qq
  (cd "$work" && apt-get download -qq prometheus)
fi
deb=$(ls "$work"/prometheus_*.deb)
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/promtool
mkdir -p "$DEST"
install -m 0755 "$work/usr/bin/promtool" "$DEST/promtool"
"$DEST/promtool" --version 2>&1 | head -1
