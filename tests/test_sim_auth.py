"""Unit tier: the simulator accepts exactly the bce-auth-v1 signatures the official SDK makes, and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from baidubce import utils as bce_utils
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.exception import BceHttpClientError, BceServerError
from baidubce.retry.retry_policy import NoRetryPolicy
from baidubce.services.eni.eni_client import EniClient
from multidict import CIMultiDict, MultiDictProxy
from yarl import URL

from services.vpc_sim.auth import AuthError, verify

pytestmark = pytest.mark.unit

AK = "ak-sim-0001"
SK = "sk-sim-secret-0001"
CREDS = {AK: SK, "ak-other": "sk-other"}
TS = 1_700_000_000
SIGNED_AT = datetime.fromtimestamp(TS, UTC)
NOW = SIGNED_AT + timedelta(seconds=3)


@dataclass
class Signed:
    """A request as the server sees it: method, raw path, parsed query, headers."""

    method: str
    path: str
    query: MultiDictProxy[str]
    headers: CIMultiDict[str]


def sdk_request(method: str, path: str, params: dict[bytes, bytes | None] | None = None, *, ak: str = AK,
                sk: str = SK, timestamp: int = TS, expiration: int = 1800,
                headers_to_sign: list[bytes] | None = None, body: bytes = b"") -> Signed:
    """Sign like baidubce.http.bce_http_client.send_request and parse the wire form like aiohttp does."""
    headers: dict[bytes, bytes | int] = {
        b"Accept": b"*/*",
        b"Content-Type": b"application/json;charset=utf-8",
        b"User-Agent": b"bce-sdk-python/0.9/3.11/linux",
        b"Host": b"bcc.bj.baidubce.com",
        b"Content-Length": len(body),
        b"x-bce-date": bce_utils.get_canonical_time(timestamp),
    }
    auth = bce_v1_signer.sign(BceCredentials(ak, sk), method.encode(), path.encode(), headers, params,
                              timestamp=timestamp, expiration_in_seconds=expiration,
                              headers_to_sign=headers_to_sign)
    headers[b"Authorization"] = auth
    wire_query = bce_utils.get_canonical_querystring(params, False) if params else b""
    url = URL(path + ("?" + wire_query.decode() if wire_query else ""), encoded=True)
    wire_headers = CIMultiDict((k.decode(), bce_utils.convert_to_standard_string(v).decode())
                               for k, v in headers.items())
    return Signed(method, url.raw_path, url.query, wire_headers)


def check(req: Signed, *, now: datetime = NOW, creds: dict[str, str] | None = None) -> str:
    return verify(req.method, req.path, req.query, req.headers, CREDS if creds is None else creds, now)


REALISTIC = [
    ("POST", "/v1/eni", {b"clientToken": b"3f1c2d9e-token"}),
    ("PUT", "/v1/eni/eni-abc", {b"attach": None, b"clientToken": b"tok-42"}),
    ("PUT", "/v1/eni/eni-abc", {b"detach": None, b"clientToken": b"tok-43"}),
    ("DELETE", "/v1/eni/eni-1/privateIp/10.0.0.5", {b"clientToken": b"tok-44"}),
    ("GET", "/v1/eni", {b"vpcId": b"vpc-1", b"instanceId": b"i-1"}),
    ("GET", "/v1/eni/eni-1", None),
    ("GET", "/v1/subnet", {b"vpcId": b"vpc-1", b"zoneName": b"cn-bj-a", b"maxKeys": b"1000"}),
    ("PUT", "/v2/instance/batchAddIp", {b"clientToken": b"t 1/2+3"}),
]


@pytest.mark.parametrize(("method", "path", "params"), REALISTIC)
def test_requests_signed_by_the_sdk_verify_and_name_their_access_key(
        method: str, path: str, params: dict[bytes, bytes | None] | None) -> None:
    assert check(sdk_request(method, path, params, body=b'{"instanceId": "i-1"}')) == AK


def test_a_request_signing_an_explicit_header_list_verifies() -> None:
    req = sdk_request("PUT", "/v1/eni/eni-abc", {b"attach": None}, headers_to_sign=[b"host", b"content-type"])
    assert req.headers["Authorization"].split("/")[4] == "host;content-type"
    assert check(req) == AK


def test_the_query_may_be_given_as_pairs_and_the_headers_as_a_plain_dict() -> None:
    req = sdk_request("GET", "/v1/eni", {b"vpcId": b"vpc-1", b"instanceId": b"i-1"})
    assert verify("GET", req.path, [("instanceId", "i-1"), ("vpcId", "vpc-1")],
                  {k.lower(): v for k, v in req.headers.items()}, CREDS, NOW) == AK


def test_a_wrong_secret_is_refused_as_a_signature_mismatch() -> None:
    req = sdk_request("POST", "/v1/eni", {b"clientToken": b"t"}, sk="not-the-secret")
    with pytest.raises(AuthError, match="signature mismatch"):
        check(req)


def test_an_unknown_access_key_is_refused() -> None:
    req = sdk_request("GET", "/v1/eni/eni-1", ak="ak-nobody")
    with pytest.raises(AuthError, match="unknown access key 'ak-nobody'"):
        check(req)


def test_a_tampered_path_is_refused() -> None:
    req = sdk_request("DELETE", "/v1/eni/eni-1/privateIp/10.0.0.5")
    with pytest.raises(AuthError, match="signature mismatch"):
        verify(req.method, "/v1/eni/eni-1/privateIp/10.0.0.6", req.query, req.headers, CREDS, NOW)


def test_a_tampered_method_is_refused() -> None:
    req = sdk_request("GET", "/v1/eni/eni-1")
    with pytest.raises(AuthError, match="signature mismatch"):
        verify("DELETE", req.path, req.query, req.headers, CREDS, NOW)


@pytest.mark.parametrize("query", [
    [("attach", ""), ("clientToken", "tok-other")],
    [("detach", ""), ("clientToken", "tok-42")],
    [("attach", ""), ("clientToken", "tok-42"), ("extra", "1")],
    [("clientToken", "tok-42")],
])
def test_a_tampered_query_is_refused(query: list[tuple[str, str]]) -> None:
    req = sdk_request("PUT", "/v1/eni/eni-abc", {b"attach": None, b"clientToken": b"tok-42"})
    with pytest.raises(AuthError, match="signature mismatch"):
        verify(req.method, req.path, query, req.headers, CREDS, NOW)


@pytest.mark.parametrize(("header", "value"), [
    ("Host", "evil.example.com"),
    ("Content-Type", "text/plain"),
    ("Content-Length", "99"),
    ("x-bce-date", "2023-11-14T22:13:21Z"),
])
def test_a_tampered_signed_header_is_refused(header: str, value: str) -> None:
    req = sdk_request("POST", "/v1/eni", {b"clientToken": b"t"}, body=b"{}")
    req.headers[header] = value
    with pytest.raises(AuthError, match="signature mismatch"):
        check(req)


def test_an_unsigned_header_may_change() -> None:
    req = sdk_request("POST", "/v1/eni", {b"clientToken": b"t"})
    req.headers["User-Agent"] = "curl/8"
    req.headers["Accept"] = "application/json"
    assert check(req) == AK


def test_a_missing_authorization_header_is_refused() -> None:
    req = sdk_request("GET", "/v1/eni/eni-1")
    del req.headers["Authorization"]
    with pytest.raises(AuthError, match="missing Authorization header") as caught:
        check(req)
    assert caught.value.message == "missing Authorization header"


@pytest.mark.parametrize("auth", [
    "Bearer abc",
    "bce-auth-v1/ak/2023-11-14T22:13:20Z/1800/sig",
    "bce-auth-v2/ak/2023-11-14T22:13:20Z/1800//sig",
    "bce-auth-v1/ak-sim-0001/2023-11-14 22:13:20/1800//sig",
    "bce-auth-v1/ak-sim-0001/2023-11-14T22:13:20Z/soon//sig",
    "bce-auth-v1/ak-sim-0001/2023-11-14T22:13:20Z/0//sig",
    "bce-auth-v1/ak-sim-0001/2023-11-14T22:13:20Z/1800//",
])
def test_a_malformed_authorization_header_is_refused(auth: str) -> None:
    req = sdk_request("GET", "/v1/eni/eni-1")
    req.headers["Authorization"] = auth
    with pytest.raises(AuthError, match="malformed"):
        check(req)


def test_an_expired_signature_is_refused() -> None:
    req = sdk_request("GET", "/v1/eni/eni-1", expiration=60)
    assert check(req, now=SIGNED_AT + timedelta(seconds=60)) == AK
    with pytest.raises(AuthError, match="expired"):
        check(req, now=SIGNED_AT + timedelta(seconds=61))


def test_a_signature_from_the_future_is_refused() -> None:
    req = sdk_request("GET", "/v1/eni/eni-1")
    with pytest.raises(AuthError, match="future"):
        check(req, now=SIGNED_AT - timedelta(hours=1))


def test_an_x_bce_date_far_from_now_is_refused_even_within_a_long_expiration() -> None:
    req = sdk_request("GET", "/v1/eni/eni-1", expiration=86_400)
    with pytest.raises(AuthError, match="x-bce-date"):
        check(req, now=SIGNED_AT + timedelta(hours=2))


def test_a_naive_now_is_taken_as_utc() -> None:
    assert check(sdk_request("GET", "/v1/eni/eni-1"), now=NOW.replace(tzinfo=None)) == AK


# --- the real SDK against a tiny aiohttp server -------------------------------------------------------------------


@dataclass
class Server:
    endpoint: str
    seen: list[str]


def _closing(resp: web.Response) -> web.Response:
    # the SDK never closes its connection after a reply; like the simulator, close it from our side
    resp.force_close()
    return resp


@pytest.fixture
async def auth_server() -> AsyncIterator[Server]:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.rel_url.raw_path_qs}")
        try:
            verify(request.method, request.rel_url.raw_path, request.query, request.headers, CREDS,
                   datetime.now(UTC))
        except AuthError as err:
            body = {"code": "AccessDenied", "message": err.message, "requestId": "req-1"}
            return _closing(web.json_response(body, status=403))
        return _closing(web.json_response({}))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(f"http://127.0.0.1:{port}", seen)
    finally:
        await runner.cleanup()


def eni_client(endpoint: str, ak: str, sk: str) -> EniClient:
    return EniClient(BceClientConfiguration(credentials=BceCredentials(ak, sk), endpoint=endpoint,
                                            retry_policy=NoRetryPolicy()))


async def test_the_real_sdk_with_the_right_keys_is_let_in(auth_server: Server) -> None:
    client = eni_client(auth_server.endpoint, AK, SK)
    await asyncio.to_thread(client.get_eni_details, "eni-1")
    await asyncio.to_thread(client.attach_eni_instance, "eni-1", "i-1")
    await asyncio.to_thread(client.delete_private_ip, "eni-1", "10.0.0.5")
    assert auth_server.seen[0] == "GET /v1/eni/eni-1"
    assert auth_server.seen[1].startswith("PUT /v1/eni/eni-1?")
    assert "attach=" in auth_server.seen[1]
    assert auth_server.seen[2].startswith("DELETE /v1/eni/eni-1/privateIp/10.0.0.5")


async def test_the_real_sdk_with_a_wrong_secret_gets_access_denied(auth_server: Server) -> None:
    client = eni_client(auth_server.endpoint, AK, "wrong-secret")
    with pytest.raises(BceHttpClientError) as caught:
        await asyncio.to_thread(client.attach_eni_instance, "eni-1", "i-1")
    last = caught.value.last_error
    assert isinstance(last, BceServerError)
    assert last.status_code == 403
    assert last.code == "AccessDenied"
    assert "signature mismatch" in str(last)


async def test_the_real_sdk_with_an_unknown_key_gets_access_denied(auth_server: Server) -> None:
    client = eni_client(auth_server.endpoint, "ak-nobody", SK)
    with pytest.raises(BceHttpClientError) as caught:
        await asyncio.to_thread(client.get_eni_details, "eni-1")
    assert caught.value.last_error.status_code == 403
    assert caught.value.last_error.code == "AccessDenied"
