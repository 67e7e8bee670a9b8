"""What a cloud failure means to us: its coded `ErrorReason`, and whether the adapter should retry it.

Pure: takes what the failure carried (HTTP status, BCE error code, message) and decides. The BCE code decides
first; a code we do not know may still be named in the message (the reference system matches error strings),
then the HTTP status class decides. No HTTP status at all means no reply came back (connection refused or reset,
timeout, unreadable reply): worth another attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.errors import ErrorReason


@dataclass(frozen=True)
class Classified:
    reason: ErrorReason
    retryable: bool


THROTTLED = Classified(ErrorReason.CLOUD_THROTTLED, retryable=True)
AUTH_FAILED = Classified(ErrorReason.CLOUD_AUTH_FAILED, retryable=False)
REJECTED = Classified(ErrorReason.CLOUD_ERROR, retryable=False)  # the request itself is wrong
FAILED = Classified(ErrorReason.CLOUD_ERROR, retryable=True)  # the cloud (or the path to it) failed

# BCE error codes we act on (services/vpc_sim/README.md lists when each is returned).
CODES: dict[str, Classified] = {
    "SubnetHasNoMoreIpException": Classified(ErrorReason.SUBNET_NO_MORE_IP, retryable=False),
    "RateLimit": THROTTLED,
    "VmMemoryCanNotAttachMoreIpException": Classified(ErrorReason.ENI_CAPACITY_EXCEED, retryable=False),
    "EniQuotaExceeded": Classified(ErrorReason.ENI_CAPACITY_EXCEED, retryable=False),
    "NoSuchObject": Classified(ErrorReason.CLOUD_NOT_FOUND, retryable=False),
    "ENIPrivateIPNotFound": Classified(ErrorReason.CLOUD_NOT_FOUND, retryable=False),
    "EniStatusInvalid": Classified(ErrorReason.CLOUD_INVALID_STATE, retryable=False),
    "PrivateIpInUseException": Classified(ErrorReason.IP_IN_USE, retryable=False),
    "RouteRuleRepeated": Classified(ErrorReason.ROUTE_RULE_REPEATED, retryable=False),
    "RouteRuleQuotaExceeded": Classified(ErrorReason.ROUTE_QUOTA_EXCEEDED, retryable=False),
    "AccessDenied": AUTH_FAILED,
    "InvalidParameter": REJECTED,
    "MalformedJSON": REJECTED,
    "InternalError": FAILED,
}

# Codes worth finding inside a message whose own code is unknown; generic words ("RateLimit" inside
# "RateLimitExceeded" is still throttling) are fine, parameter errors are not searched for.
_IN_MESSAGE = [code for code, verdict in CODES.items() if verdict is not REJECTED and code != "InternalError"]


def classify(status: int | None, code: str | None, message: str = "") -> Classified:
    """Classify one failed attempt. `status` is None when no HTTP reply was received."""
    if code and code in CODES:
        return CODES[code]
    named = next((c for c in _IN_MESSAGE if c in (message or "")), None)
    if named is not None:
        return CODES[named]
    if status is None:
        return FAILED
    if status == 429:
        return THROTTLED
    if status in (401, 403):
        return AUTH_FAILED
    if 400 <= status < 500:
        return REJECTED
    if status >= 500:
        return FAILED
    return REJECTED  # 1xx / 3xx: nothing a retry would change
