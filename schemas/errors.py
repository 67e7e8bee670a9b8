"""Coded error reasons: every failure a user can see carries one of these."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from schemas.base import Contract


class ErrorReason(StrEnum):
    # pool and cloud capacity
    IP_POOL_EXHAUSTED = "IPPoolExhausted"
    WAIT_CREATE_MORE_ENI = "WaitCreateMoreENI"
    ENI_CAPACITY_EXCEED = "ENICapacityExceed"
    SUBNET_NO_MORE_IP = "SubnetNoMoreIP"
    NO_AVAILABLE_SUBNET = "NoAvailableSubnet"
    SUBNET_NOT_IN_ZONE = "SubnetNotInZone"
    PSTS_SUBNET_EXHAUSTED = "PSTSSubnetExhausted"
    CIDR_POOL_EXHAUSTED = "CIDRPoolExhausted"
    WAIT_NODE_CIDR = "WaitNodeCIDR"
    # cloud
    CLOUD_THROTTLED = "CloudThrottled"
    CLOUD_ERROR = "CloudError"
    CLOUD_NOT_FOUND = "CloudNotFound"
    CLOUD_INVALID_STATE = "CloudInvalidState"
    CLOUD_AUTH_FAILED = "CloudAuthFailed"
    IP_IN_USE = "IPInUse"
    ROUTE_RULE_REPEATED = "RouteRuleRepeated"
    ROUTE_QUOTA_EXCEEDED = "RouteQuotaExceeded"
    ROUTE_CONFLICT = "RouteConflict"
    # records and requests
    NODE_NOT_REGISTERED = "NodeNotRegistered"
    ENDPOINT_NOT_FOUND = "EndpointNotFound"
    INVALID_REQUEST = "InvalidRequest"
    CONFLICT = "Conflict"
    NOT_LEADER = "NotLeader"
    # transport and process
    TIMEOUT = "Timeout"
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    DATAPATH_FAILED = "DatapathFailed"
    INTERNAL = "Internal"


# What a caller may do about a reason: retry the same request later, or not.
RETRYABLE: frozenset[ErrorReason] = frozenset(
    {
        ErrorReason.WAIT_CREATE_MORE_ENI,
        ErrorReason.WAIT_NODE_CIDR,
        ErrorReason.CLOUD_THROTTLED,
        ErrorReason.TIMEOUT,
        ErrorReason.SERVICE_UNAVAILABLE,
        ErrorReason.CONFLICT,
        ErrorReason.NOT_LEADER,
        ErrorReason.IP_POOL_EXHAUSTED,
        ErrorReason.PSTS_SUBNET_EXHAUSTED,  # IPs of its subnets come back as pods go; kubelet retries the ADD
    }
)

DESCRIPTIONS: dict[ErrorReason, str] = {
    ErrorReason.IP_POOL_EXHAUSTED: "the node's pool has no free IP and could not be refilled in time",
    ErrorReason.WAIT_CREATE_MORE_ENI: "the pool is empty while a new ENI is being created and attached",
    ErrorReason.ENI_CAPACITY_EXCEED: "the node has reached its ENI quota and every ENI is full",
    ErrorReason.SUBNET_NO_MORE_IP: "the subnet has no free address left",
    ErrorReason.NO_AVAILABLE_SUBNET: "no subnet in the node's zone is configured or has room",
    ErrorReason.SUBNET_NOT_IN_ZONE: "no subnet of the pod's PodSubnetTopologySpread is usable in its node's zone "
                                    "(another zone, absent from the VPC): retrying on this node cannot help",
    ErrorReason.PSTS_SUBNET_EXHAUSTED: "the subnets of the pod's PodSubnetTopologySpread have no free IP for its node "
                                       "(subnet or ranges full, or no room on the node for an ENI in them)",
    ErrorReason.CIDR_POOL_EXHAUSTED: "the cluster container CIDR has no free node CIDR left",
    ErrorReason.WAIT_NODE_CIDR: "the pool is empty while a node CIDR and its VPC route rule are being set up",
    ErrorReason.CLOUD_THROTTLED: "the cloud API rate limit was hit and retries ran out",
    ErrorReason.CLOUD_ERROR: "the cloud API failed",
    ErrorReason.CLOUD_NOT_FOUND: "the cloud resource does not exist",
    ErrorReason.CLOUD_INVALID_STATE: "the cloud resource is not in a state that allows the operation",
    ErrorReason.CLOUD_AUTH_FAILED: "the cloud rejected our credentials or signature",
    ErrorReason.IP_IN_USE: "the private IP is already in use in the VPC",
    ErrorReason.ROUTE_RULE_REPEATED: "a route rule with that destination already exists",
    ErrorReason.ROUTE_QUOTA_EXCEEDED: "the VPC route table is at its rule quota",
    ErrorReason.ROUTE_CONFLICT: "a rule we do not own (or with another next hop) holds the destination",
    ErrorReason.NODE_NOT_REGISTERED: "the node has no NetResourceSet: it has not registered",
    ErrorReason.ENDPOINT_NOT_FOUND: "no endpoint is recorded for that container and interface",
    ErrorReason.INVALID_REQUEST: "the request failed validation",
    ErrorReason.CONFLICT: "a concurrent writer changed the record; retry",
    ErrorReason.NOT_LEADER: "this replica is a standby; the leader serves the request",
    ErrorReason.TIMEOUT: "no reply within the deadline",
    ErrorReason.SERVICE_UNAVAILABLE: "no service is listening on the subject",
    ErrorReason.DATAPATH_FAILED: "programming the node's network failed",
    ErrorReason.INTERNAL: "an unexpected error inside the service",
}

# Status-like codes put in the micro-service error header, so generic NATS tooling sees a class of error.
STATUS: dict[ErrorReason, int] = {
    ErrorReason.INVALID_REQUEST: 400,
    ErrorReason.NODE_NOT_REGISTERED: 404,
    ErrorReason.ENDPOINT_NOT_FOUND: 404,
    ErrorReason.CLOUD_NOT_FOUND: 404,
    ErrorReason.CONFLICT: 409,
    ErrorReason.ROUTE_RULE_REPEATED: 409,
    ErrorReason.ROUTE_CONFLICT: 409,
    ErrorReason.IP_IN_USE: 409,
    ErrorReason.CLOUD_THROTTLED: 429,
    ErrorReason.TIMEOUT: 504,
    ErrorReason.SERVICE_UNAVAILABLE: 503,
    ErrorReason.NOT_LEADER: 503,
    ErrorReason.INTERNAL: 500,
}


def status_of(reason: ErrorReason) -> int:
    return STATUS.get(reason, 422)


class ErrorReply(Contract):
    """The body of every error reply on the bus."""

    reason: ErrorReason
    message: str
    retryable: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class CceError(Exception):
    """A failure with a coded reason; raised by handlers and by bus clients."""

    def __init__(self, reason: ErrorReason, message: str, **details: Any) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.details = details

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE

    def to_reply(self) -> ErrorReply:
        return ErrorReply(
            reason=self.reason, message=self.message, retryable=self.retryable, details=self.details
        )

    @classmethod
    def from_reply(cls, reply: ErrorReply) -> CceError:
        return cls(reply.reason, reply.message, **reply.details)
