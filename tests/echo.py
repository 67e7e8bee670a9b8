"""A test-only contract and request subject, for exercising the chassis without a real service."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Contract, NodeName
from schemas.subjects import RequestSubject


class EchoRequest(Contract):
    node: NodeName
    text: str = Field(max_length=64)
    count: int = Field(1, ge=1, le=10)
    delay_s: float = Field(0.0, ge=0, le=10)


class EchoReply(Contract):
    text: str
    served_by: str = ""


ECHO = RequestSubject("echo", "cce.test.v1.echo", EchoRequest, EchoReply, "echo", "repeat the text")
