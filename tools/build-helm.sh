#!/usr/bin/env bash
# Build the `helm` command from the helm.sh/helm/v4 Go module (through the Go module proxy, not a download site) into
# the user's cache dir, once per machine and release. Prints the directory holding the binary.
#   tools/build-helm.sh [vX.Y.Z]      (default: $HELM_VERSION or the release below)
# The chart tests (tests/test_chart.py) and `make helm-lint` / `make helm-template` find it there.
set -euo pipefail
version="${1:-${HELM_VERSION:-v4.3.2}}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cce-network/helm-$version"
if [[ -x "$cache/helm" ]]; then
    echo "$cache"
    exit 0
fi
command -v go >/dev/null || { echo "build-helm: needs Go (the module proxy must be reachable)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# helm's own Makefile stamps its version the same way (`helm version` says which release this is)
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
# the module has no replace directives, so `go install module@version` builds exactly the released go.mod/go.sum
GOBIN="$work/out" CGO_ENABLED=0 \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v4/cmd/helm@$version" >&2
"$work/out/helm" version --short >/dev/null
mkdir -p "$(dirname "$cache")"
rm -rf "$cache.tmp" && mv "$work/out" "$cache.tmp" && rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache"
