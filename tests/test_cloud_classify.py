"""Cloud failures -> our coded reasons, and whether the adapter retries them."""

from __future__ import annotations

import pytest

from cloud.classify import CODES, Classified, classify
from schemas.errors import ErrorReason as R

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "code", "reason", "retryable"),
    [
        (400, "SubnetHasNoMoreIpException", R.SUBNET_NO_MORE_IP, False),
        (429, "RateLimit", R.CLOUD_THROTTLED, True),
        (400, "VmMemoryCanNotAttachMoreIpException", R.ENI_CAPACITY_EXCEED, False),
        (400, "EniQuotaExceeded", R.ENI_CAPACITY_EXCEED, False),
        (404, "NoSuchObject", R.CLOUD_NOT_FOUND, False),
        (404, "ENIPrivateIPNotFound", R.CLOUD_NOT_FOUND, False),
        (409, "EniStatusInvalid", R.CLOUD_INVALID_STATE, False),
        (409, "PrivateIpInUseException", R.IP_IN_USE, False),
        (400, "RouteRuleRepeated", R.ROUTE_RULE_REPEATED, False),
        (400, "RouteRuleQuotaExceeded", R.ROUTE_QUOTA_EXCEEDED, False),
        (403, "AccessDenied", R.CLOUD_AUTH_FAILED, False),
        (400, "InvalidParameter", R.CLOUD_ERROR, False),
        (400, "MalformedJSON", R.CLOUD_ERROR, False),
        (500, "InternalError", R.CLOUD_ERROR, True),
    ],
)
def test_known_cloud_codes(status: int, code: str, reason: R, retryable: bool) -> None:
    assert classify(status, code, "whatever the cloud said") == Classified(reason, retryable)


@pytest.mark.parametrize(
    ("status", "code", "reason", "retryable"),
    [
        (429, None, R.CLOUD_THROTTLED, True),
        (429, "TooManyRequests", R.CLOUD_THROTTLED, True),
        (401, None, R.CLOUD_AUTH_FAILED, False),
        (403, "SignatureDoesNotMatch", R.CLOUD_AUTH_FAILED, False),
        (400, "SomethingNew", R.CLOUD_ERROR, False),
        (404, "NotFoundAtTheGateway", R.CLOUD_ERROR, False),
        (409, None, R.CLOUD_ERROR, False),
        (500, None, R.CLOUD_ERROR, True),
        (502, "BadGateway", R.CLOUD_ERROR, True),
        (503, "ServiceUnavailable", R.CLOUD_ERROR, True),
        (504, None, R.CLOUD_ERROR, True),
        (302, None, R.CLOUD_ERROR, False),
    ],
)
def test_unknown_codes_fall_back_to_the_http_status(status: int, code: str | None, reason: R,
                                                    retryable: bool) -> None:
    assert classify(status, code) == Classified(reason, retryable)


@pytest.mark.parametrize("message", ["ConnectionRefusedError: [Errno 111] Connection refused", "timed out", ""])
def test_no_reply_at_all_is_retried_as_a_cloud_error(message: str) -> None:
    assert classify(None, None, message) == Classified(R.CLOUD_ERROR, True)


def test_a_known_code_named_only_in_the_message_still_counts() -> None:
    verdict = classify(400, "BadRequest", "[Code: SubnetHasNoMoreIpException; RequestId: abc] no free ip")
    assert verdict == Classified(R.SUBNET_NO_MORE_IP, False)
    assert classify(500, "ServerBusy", "RateLimit exceeded for this api") == Classified(R.CLOUD_THROTTLED, True)


def test_the_code_wins_over_the_message() -> None:
    assert classify(400, "InvalidParameter", "privateIp: RouteRuleRepeated?") == Classified(R.CLOUD_ERROR, False)


def test_the_code_wins_over_the_status() -> None:
    assert classify(500, "SubnetHasNoMoreIpException").reason is R.SUBNET_NO_MORE_IP
    assert classify(400, "RateLimit").retryable


def test_every_retryable_code_is_throttling_or_a_server_failure() -> None:
    assert {code for code, verdict in CODES.items() if verdict.retryable} == {"RateLimit", "InternalError"}


def test_a_verdict_is_frozen() -> None:
    verdict = classify(429, "RateLimit")
    with pytest.raises(AttributeError):
        verdict.retryable = False  # type: ignore[misc]
