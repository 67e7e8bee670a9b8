"""Contracts of cce-network: records, bus messages, events, subjects and coded errors.

Nothing here has behaviour beyond validation; services share only these and the chassis.
"""

from schemas.base import SCHEMA_VERSION, Contract, InstanceType, NetworkMode, subject_token
from schemas.errors import CceError, ErrorReason, ErrorReply

__all__ = [
    "SCHEMA_VERSION",
    "CceError",
    "Contract",
    "ErrorReason",
    "ErrorReply",
    "InstanceType",
    "NetworkMode",
    "subject_token",
]
