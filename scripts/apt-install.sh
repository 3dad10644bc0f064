#!/usr/bin/env bash
# Installs a Debian package for the tests that need a real binary (Prometheus, Chromium).
# Usage: scripts/apt-install.sh COMMAND PACKAGE. Idempotent: does nothing when COMMAND is
# already on PATH. Without apt-get (not Debian) or root it says so and exits 0: the tests
# that need the binary then skip with a reason. A failing apt-get fails the script.
set -euo pipefail
command=$1
package=$2
if command -v "$command" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-install: apt-get not found; install $package yourself" >&2
  exit 0
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "apt-install: need root (or passwordless sudo) for apt-get to install $package" >&2
    exit 0
  fi
fi
# The tests run their own instances: keep a package's service from starting
# (policy-rc.d exit 101 = "action forbidden"), unless the machine already has a policy.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  made_policy=1
fi
cleanup() { if [[ $made_policy == 1 ]]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
# Another apt run (a second checkout installing at the same time, unattended upgrades)
# holds dpkg's locks for a while: wait for it rather than fail.
wait_lock=(-o DPkg::Lock::Timeout=600)
$sudo apt-get "${wait_lock[@]}" update -q >/dev/null
$sudo apt-get "${wait_lock[@]}" install -y -q --no-install-recommends "$package" >/dev/null
"$command" --version 2>&1 | head -1
