#!/usr/bin/env bash
# Install Debian's chromium + chromium-driver for the browser tests (make browser-deps).
# Idempotent and quiet: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are there.
# Needs root or sudo otherwise.
set -euo pipefail

CHROMIUM=${YOLO_CHROMIUM:-/usr/bin/chromium}
DRIVER=${YOLO_CHROMEDRIVER:-/usr/bin/chromedriver}
if [[ -x $CHROMIUM && -x $DRIVER ]]; then
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "error: $CHROMIUM or $DRIVER is missing and installing them needs root (or sudo):" >&2
    echo "  apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
fi

echo "browser-deps: installing chromium and chromium-driver (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
install() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
              chromium chromium-driver >/dev/null; }
if ! install 2>/dev/null; then
  "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
  install
fi
[[ -x $CHROMIUM && -x $DRIVER ]] || { echo "error: $CHROMIUM or $DRIVER still missing after apt-get install" >&2; exit 1; }
echo "browser-deps: $("$CHROMIUM" --version 2>/dev/null || echo chromium installed)" >&2
