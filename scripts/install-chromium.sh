#!/usr/bin/env bash
# Installs Chromium (Debian's package) for the test that opens `tokenyard report` in a
# headless browser. See scripts/apt-install.sh for when it does nothing.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" chromium chromium
