"""NATS credentials files (`.creds`: a user JWT and its nkey seed): what a process can learn from its own."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

BEGIN_JWT = "-----BEGIN NATS USER JWT-----"


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (not verified: the server does that)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def creds_claims(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if BEGIN_JWT not in text:
        raise ValueError(f"{path} is not a NATS credentials file (no user JWT)")
    token = text.split(BEGIN_JWT, 1)[1].strip().split("\n", 1)[0].strip()
    return jwt_claims(token)


def creds_identity(path: Path) -> str:
    """The identity the credentials were issued to (the JWT's `name`); its inbox prefix is `_INBOX.<identity>`."""
    return str(creds_claims(path).get("name") or "")


def redact_url(url: str) -> str:
    """A server URL list fit for a log line: user, password or token in it replaced by `***`."""
    out = []
    for part in url.split(","):
        scheme, sep, rest = part.strip().partition("://")
        if sep and "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        out.append(f"{scheme}{sep}{rest}")
    return ",".join(out)
