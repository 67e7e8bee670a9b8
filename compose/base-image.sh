#!/usr/bin/env bash
# The base image compose/Dockerfile starts FROM, made from Debian's packages when no image registry is reachable.
# Does nothing when the tag is already in the engine. Otherwise: mmdebstrap a minimal Debian 12 (Python 3.11, venv,
# iproute2, CA certificates, tini) and `docker import` it under the tag the Dockerfile names, so the Dockerfile
# stays what a user with a registry would pull (python:3.11-slim also works: the Dockerfile adds tini and iproute2
# when its base lacks them).
#
#   compose/base-image.sh [TAG]      (default: the FROM of compose/Dockerfile); needs root, mmdebstrap, docker
set -euo pipefail
cd "$(dirname "$0")"
TAG=${1:-$(awk 'toupper($1) == "FROM" {print $2; exit}' Dockerfile)}
DOCKER=${DOCKER:-docker}

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG: present"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "base-image.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 3; }
# the host's Debian sources (its mirror), else Debian's own
SOURCES=/etc/apt/sources.list.d/debian.sources
[[ -r $SOURCES ]] || SOURCES=http://deb.debian.org/debian
echo "base image $TAG: building from Debian bookworm with mmdebstrap ($SOURCES)"
LOG=$(mktemp -t cce-base-image.XXXXXX.log)
trap 'rm -f "$LOG"' EXIT
if ! mmdebstrap --variant=minbase --mode=root --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-venv,iproute2,ca-certificates,tini \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm - "$SOURCES" </dev/null 2>"$LOG" \
  | "$DOCKER" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "Debian 12 minbase + python3 (mmdebstrap, compose/base-image.sh)" \
        - "$TAG" >/dev/null; then
    echo "base-image.sh: building $TAG failed; mmdebstrap said:" >&2
    tail -30 "$LOG" >&2
    "$DOCKER" image rm "$TAG" >/dev/null 2>&1 || true   # never leave a half-made base under the tag
    exit 1
fi
echo "base image $TAG: imported"
