"""Events published to the JetStream stream CCE_EVENTS on `cce.events.<kind>.<node>.<what>`."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from schemas.base import Contract, utcnow
from schemas.errors import ErrorReason


class EventKind(StrEnum):
    NODE = "node"
    ENDPOINT = "endpoint"
    ENI = "eni"
    IP = "ip"
    SUBNET = "subnet"
    ROUTE = "route"
    CIDR = "cidr"
    DATAPATH = "datapath"
    SERVICE = "service"


class Severity(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Event(Contract):
    kind: EventKind
    node: str = Field("-", description="the node it concerns, '-' for cluster-wide events")
    what: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$", description="e.g. allocated, attached, conflict")
    severity: Severity = Severity.NORMAL
    reason: ErrorReason | None = None
    message: str = ""
    object: str = Field("", description="the record key it is about (ENI id, endpoint key, CIDR...)")
    source: str = Field("", description="the service instance that published it")
    data: dict[str, Any] = Field(default_factory=dict)
    time: datetime = Field(default_factory=utcnow)
