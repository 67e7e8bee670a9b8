#!/usr/bin/env bash
# Build what bench/cri.py needs to drive containerd's CRI with no image registry, into the user's cache dir, once
# per machine (and per version of this script). Prints the directory holding:
#   pause       a static sandbox process (Go, CGO_ENABLED=0): waits for SIGTERM/SIGINT, reaps orphans meanwhile
#   pause.tar   an image of it (docker-archive, one layer, user 65535) tagged $PAUSE_IMAGE, for `ctr images import`
#   cri-call    a CRI client (k8s.io/cri-api runtime/v1 over gRPC): JSON requests on stdin, one JSON reply per line
#               on stdout with the RPC's own duration in ns (timed around the call, so no process start is in it)
#   tools/build-cri.sh            (PAUSE_IMAGE: the image's name, default cce.local/pause:bench)
set -euo pipefail
cri_api="v0.36.3"   # k8s.io/cri-api at the kube tools' release (tools/build-kube.sh): one module cache for both
image="${PAUSE_IMAGE:-cce.local/pause:bench}"
key="$(cat "$0" | sha256sum | cut -c1-12)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cce-network/cri-$cri_api-$key"
if [[ -x "$cache/pause" && -x "$cache/cri-call" && -s "$cache/pause.tar" && "$(cat "$cache/image" 2>/dev/null)" == "$image" ]]
then
    echo "$cache"
    exit 0
fi
command -v go >/dev/null || { echo "build-cri: needs Go (the module proxy must be reachable)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod CGO_ENABLED=0
go mod init cce-network.local/cri-tools >/dev/null 2>&1
echo "require k8s.io/cri-api $cri_api" >> go.mod
mkdir -p cmd/pause cmd/cri-call
cat > cmd/pause/main.go <<'GO'
// pause: the process a pod sandbox holds its namespaces with.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		for { // PID 1 of the pod: reap what is left to it
			if pid, _ := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}
GO
cat > cmd/cri-call/main.go <<'GO'
// cri-call: CRI RuntimeService calls on a unix socket (argv[1]), one JSON request per stdin line, one JSON reply per
// stdout line; "ns" is the RPC's duration as this client saw it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type request struct {
	Op           string            `json:"op"` // version, status, runp, inspectp, stopp, rmp, list
	ID           string            `json:"id"`
	Name         string            `json:"name"`
	UID          string            `json:"uid"`
	Namespace    string            `json:"namespace"`
	Handler      string            `json:"handler"`
	LogDir       string            `json:"log_dir"`
	CgroupParent string            `json:"cgroup_parent"`
	Labels       map[string]string `json:"labels"`
	TimeoutS     float64           `json:"timeout_s"`
}

type reply struct {
	OK      bool     `json:"ok"`
	Error   string   `json:"error,omitempty"`
	Ns      int64    `json:"ns"`
	ID      string   `json:"id,omitempty"`
	IP      string   `json:"ip,omitempty"`
	State   string   `json:"state,omitempty"`
	Version string   `json:"version,omitempty"`
	IDs     []string `json:"ids,omitempty"`
}

func call(rt cri.RuntimeServiceClient, req request) reply {
	timeout := 120 * time.Second
	if req.TimeoutS > 0 {
		timeout = time.Duration(req.TimeoutS * float64(time.Second))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var rep reply
	var err error
	start := time.Now()
	switch req.Op {
	case "version":
		var r *cri.VersionResponse
		if r, err = rt.Version(ctx, &cri.VersionRequest{}); err == nil {
			rep.Version = r.RuntimeName + " " + r.RuntimeVersion + " (CRI " + r.RuntimeApiVersion + ")"
		}
	case "status":
		var r *cri.StatusResponse
		if r, err = rt.Status(ctx, &cri.StatusRequest{}); err == nil {
			rep.State = "ready"
			for _, c := range r.Status.Conditions {
				if !c.Status {
					rep.State = "not ready"
					rep.Error += c.Type + ": " + c.Reason + " " + c.Message + "; "
				}
			}
		}
	case "runp":
		config := &cri.PodSandboxConfig{
			Metadata:     &cri.PodSandboxMetadata{Name: req.Name, Uid: req.UID, Namespace: req.Namespace},
			Hostname:     req.Name,
			LogDirectory: req.LogDir,
			Labels:       req.Labels,
			Linux: &cri.LinuxPodSandboxConfig{
				CgroupParent: req.CgroupParent,
				SecurityContext: &cri.LinuxSandboxSecurityContext{
					NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_POD},
				},
			},
		}
		var r *cri.RunPodSandboxResponse
		if r, err = rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: config, RuntimeHandler: req.Handler}); err == nil {
			rep.ID = r.PodSandboxId
		}
	case "inspectp":
		var r *cri.PodSandboxStatusResponse
		if r, err = rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: req.ID}); err == nil {
			rep.ID, rep.State = r.Status.Id, r.Status.State.String()
			if r.Status.Network != nil {
				rep.IP = r.Status.Network.Ip
			}
		}
	case "stopp":
		_, err = rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: req.ID})
	case "rmp":
		_, err = rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: req.ID})
	case "list":
		var r *cri.ListPodSandboxResponse
		if r, err = rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{}); err == nil {
			for _, s := range r.Items {
				rep.IDs = append(rep.IDs, s.Id)
			}
		}
	default:
		rep.Error = "unknown op " + req.Op
		return rep
	}
	rep.Ns = time.Since(start).Nanoseconds()
	if err != nil {
		rep.Error = err.Error()
	} else {
		rep.OK = true
	}
	return rep
}

func main() {
	if len(os.Args) != 2 {
		os.Stderr.WriteString("usage: cri-call /path/to/cri.sock  (JSON requests on stdin)\n")
		os.Exit(2)
	}
	var conn *grpc.ClientConn
	socket, err := filepath.Abs(os.Args[1])
	if err == nil {
		conn, err = grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req request
		rep := reply{Error: "bad request"}
		if err := json.Unmarshal(in.Bytes(), &req); err == nil {
			rep = call(rt, req)
		}
		if err := out.Encode(rep); err != nil {
			os.Exit(1)
		}
	}
}
GO
go mod tidy >&2
mkdir -p out rootfs
go build -trimpath -ldflags '-s -w' -o out/ ./cmd/pause ./cmd/cri-call >&2
# the image: one layer holding /pause, a config naming it, a docker-archive manifest tagging it
cp out/pause rootfs/pause
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C rootfs -cf layer.tar pause
layer="$(sha256sum layer.tar | cut -d' ' -f1)"
arch="$(go env GOARCH)"
printf '{"architecture":"%s","os":"linux","config":{"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"tools/build-cri.sh"}]}' \
    "$arch" "$layer" > config.json
config="$(sha256sum config.json | cut -d' ' -f1)"
mkdir -p archive/"$layer"
mv layer.tar archive/"$layer"/layer.tar
mv config.json archive/"$config".json
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config" "$image" "$layer" \
    > archive/manifest.json
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C archive -cf out/pause.tar .
echo "$image" > out/image
mkdir -p "$(dirname "$cache")"
rm -rf "$cache.tmp" && mv out "$cache.tmp" && rm -rf "$cache" && mv "$cache.tmp" "$cache"
for old in "$(dirname "$cache")"/cri-*; do   # builds of earlier versions of this script
    [[ "$old" == "$cache" ]] || rm -rf "$old"
done
echo "$cache"
