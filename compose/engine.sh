#!/usr/bin/env bash
# A private Docker engine for the compose stack: Debian's dockerd with its own data root, exec root, pidfile and
# socket, leaving the host's firewall and forwarding alone (--iptables=false --ip-forward=false --ip-masq=false
# --bridge=none). With those flags there is no default `bridge` network, but compose's own (user-defined) network
# works: containers reach each other over its Linux bridge, and published ports go through docker-proxy (the
# userland proxy), which needs no iptables. So the stack runs on compose's default network, ports bound to 127.0.0.1.
#
#   compose/engine.sh start    start it unless it runs; prints `started` or `running` (exit 0), then waits for it
#   compose/engine.sh stop     stop it (SIGTERM, then SIGKILL), unmount what it left under its roots
#   compose/engine.sh status   exit 0 when it answers
#   compose/engine.sh host     print its DOCKER_HOST (unix://...)
#
# Where: CCE_DOCKER_DATA (images, volumes; kept between runs: a warm build reuses the layers;
# default /var/lib/cce-network/docker) and CCE_DOCKER_RUN (socket, pidfile, exec root; default /run/cce-network-docker).
# Needs root and Debian's docker.io (`make engine-tools` installs it).
set -euo pipefail

DATA=${CCE_DOCKER_DATA:-/var/lib/cce-network/docker}
RUN=${CCE_DOCKER_RUN:-/run/cce-network-docker}
SOCK=$RUN/docker.sock
PIDFILE=$RUN/dockerd.pid
EXEC=$RUN/exec
LOG=$(dirname "$DATA")/dockerd.log   # this run's log (the last one after a stop)
POOL=${CCE_DOCKER_ADDRESS_POOL:-base=172.29.0.0/16,size=24}
DOCKERD=${DOCKERD:-$(command -v dockerd || echo /usr/sbin/dockerd)}
START_TIMEOUT_S=${CCE_DOCKER_START_TIMEOUT_S:-60}

pid() { [[ -s $PIDFILE ]] && cat "$PIDFILE"; }
alive() { local p; p=$(pid) && [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }
answers() { curl -sf --max-time 2 --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1; }

unmount_under() {  # deepest first; lazily when still busy
    local dir=$1 m
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

case ${1:-} in
start)
    if alive; then
        echo running
    else
        [[ -x $DOCKERD ]] || { echo "engine.sh: dockerd not found (apt-get install docker.io)" >&2; exit 3; }
        [[ $(id -u) == 0 ]] || { echo "engine.sh: dockerd needs root" >&2; exit 3; }
        mkdir -p "$DATA" "$RUN" "$EXEC"
        unmount_under "$EXEC"
        rm -f "$SOCK" "$PIDFILE"
        # its own session: the caller's Ctrl-C or exit does not reach it; `stop` does
        setsid "$DOCKERD" --data-root "$DATA" --exec-root "$EXEC" --pidfile "$PIDFILE" -H "unix://$SOCK" \
            --storage-driver overlay2 --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
            --default-address-pool "$POOL" </dev/null >"$LOG" 2>&1 &
        echo started
    fi
    deadline=$((SECONDS + START_TIMEOUT_S))
    until answers; do
        if ((SECONDS > deadline)); then
            echo "engine.sh: dockerd did not answer on $SOCK within ${START_TIMEOUT_S}s; its log: $LOG" >&2
            tail -20 "$LOG" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    ;;
stop)
    if p=$(pid) && [[ -n $p ]]; then
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$p" 2>/dev/null; then
            echo "engine.sh: dockerd $p did not stop within 30s; killing it" >&2
            kill -KILL "$p" 2>/dev/null || true
        fi
    fi
    unmount_under "$EXEC"
    unmount_under "$DATA"
    rm -rf "$RUN"
    ;;
status)
    answers
    ;;
host)
    echo "unix://$SOCK"
    ;;
*)
    echo "usage: $0 start|stop|status|host" >&2
    exit 2
    ;;
esac
