"""Common base of every contract carried on the bus or stored in a bucket."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# Kubernetes node names are DNS subdomains: lowercase alphanumerics, '-' and '.'.
NODE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
NodeName = Annotated[str, Field(pattern=NODE_NAME_PATTERN, max_length=253)]

# Identifiers taken from the cloud (eni-..., sbn-..., i-...) or from a container runtime.
CloudId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_]{0,127}$")]
ContainerId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$")]
IfName = Annotated[str, Field(pattern=r"^[^\s/:]{1,15}$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of all payloads: unknown fields are ignored so contracts can grow by addition."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, use_enum_values=False)

    schema_version: int = SCHEMA_VERSION


class NetworkMode(StrEnum):
    VPC_ENI = "vpc-eni"
    VPC_ENI_PRIMARY = "vpc-eni-primary"
    VPC_ENI_EXCLUSIVE = "vpc-eni-exclusive"
    VPC_ROUTE = "vpc-route"


class InstanceType(StrEnum):
    BCC = "BCC"
    EBC = "EBC"
    BBC = "BBC"


_TOKEN_UNSAFE = re.compile(r"[^-A-Za-z0-9_]")


def subject_token(name: str) -> str:
    """Encode a name as one NATS subject token (and KV key segment).

    Node names may contain '.', which separates subject tokens; '_' never appears in a node name,
    so the mapping '.' -> '_' is reversible for them.
    """
    token = name.replace(".", "_")
    if not token or _TOKEN_UNSAFE.search(token):
        raise ValueError(f"{name!r} cannot be used as a subject token")
    return token


def from_subject_token(token: str) -> str:
    return token.replace("_", ".")
