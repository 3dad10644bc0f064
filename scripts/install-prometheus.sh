#!/usr/bin/env bash
# Installs Prometheus (Debian's package, /usr/bin/prometheus) for the autoscaler's
# integration tests, which start their own instance on 127.0.0.1. Idempotent: does
# nothing when a prometheus binary is already on PATH. Without apt-get (not Debian) or
# root it says so and exits 0: the tests that need Prometheus then skip with a reason.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: apt-get not found; install Prometheus 2.x yourself" >&2
  exit 0
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "install-prometheus: need root (or passwordless sudo) for apt-get" >&2
    exit 0
  fi
fi
# The tests run their own Prometheus: keep the package's service from starting
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
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -1
