#!/usr/bin/env bash
# Installs Prometheus (Debian's package, /usr/bin/prometheus, with promtool) for the
# autoscaler's and the observability integration tests, which start their own instance
# on 127.0.0.1. See scripts/apt-install.sh for when it does nothing.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" prometheus prometheus
