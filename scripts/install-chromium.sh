#!/usr/bin/env bash
# Installs Chromium (Debian's package) for the test that opens `tokenyard report` in a
# headless browser. Idempotent: does nothing when chromium is already on PATH. Without
# apt-get (not Debian) or root it says so and exits 0: that test then skips with the
# reason.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: apt-get not found; install Chromium yourself" >&2
  exit 0
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "install-chromium: need root (or passwordless sudo) for apt-get" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends chromium >/dev/null
chromium --version
