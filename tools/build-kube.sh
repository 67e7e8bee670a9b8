#!/usr/bin/env bash
# Build kube-apiserver and kubectl from the k8s.io/kubernetes Go module (through the Go module proxy) into
# the user's cache dir, once per machine and release. Prints the directory holding the binaries.
#   tools/build-kube.sh [vX.Y.Z]      (default: $KUBE_VERSION or the release below)
# The tests (tests/kube.py) and `cce-net up --kube` find the binaries there; etcd comes from Debian's etcd-server.
set -euo pipefail
version="${1:-${KUBE_VERSION:-v1.36.3}}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cce-network/kube-$version"
if [[ -x "$cache/kube-apiserver" && -x "$cache/kubectl" ]]; then
    echo "$cache"
    exit 0
fi
command -v go >/dev/null || { echo "build-kube: needs Go (the module proxy must be reachable)" >&2; exit 1; }
staging="v0.${version#v1.}"            # k8s.io/<staging> modules are released as v0.Y.Z beside v1.Y.Z
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod CGO_ENABLED=0
go mod init cce-network.local/kube-tools >/dev/null 2>&1
modfile="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
# every staging module kubernetes replaces with ./staging/src/k8s.io/X becomes k8s.io/X at the matching v0
{
    echo "require k8s.io/kubernetes $version"
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*#replace \1 => \1 '"$staging"'#p' "$modfile"
} >> go.mod
mkdir -p cmd/kube-apiserver cmd/kubectl
cat > cmd/kube-apiserver/main.go <<'GO'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() { os.Exit(cli.Run(app.NewAPIServerCommand())) }
GO
cat > cmd/kubectl/main.go <<'GO'
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
GO
go mod tidy >&2
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$version"
mkdir -p "$work/out"
go build -trimpath -ldflags "$ldflags" -o "$work/out/" ./cmd/kube-apiserver ./cmd/kubectl >&2
mkdir -p "$(dirname "$cache")"
rm -rf "$cache.tmp" && mv "$work/out" "$cache.tmp" && rm -rf "$cache" && mv "$cache.tmp" "$cache"
echo "$cache"
