"""Server-side verification of BCE `bce-auth-v1` request signatures.

The client sends ``Authorization: bce-auth-v1/{accessKey}/{timestamp}/{expirationSeconds}/{signedHeaders}/{signature}``
where ``timestamp`` is UTC ``YYYY-MM-DDTHH:MM:SSZ``, ``signedHeaders`` is ``;``-joined lowercase names (empty when the
client used the default set) and ``signature`` is::

    signing_key = hex(HMAC-SHA256(secret, "bce-auth-v1/{accessKey}/{timestamp}/{expirationSeconds}"))
    signature   = hex(HMAC-SHA256(signing_key, METHOD \\n URI \\n QUERY \\n HEADERS))

exactly as ``baidubce.auth.bce_v1_signer.sign`` builds it:

- URI: the path as the client sent it (the Python SDK signs and sends the same unencoded bytes; other SDKs sign
  the BCE URI-encoding of the path, slashes kept, which is also accepted);
- QUERY: every parameter as ``enc(key)=enc(value)`` (a value-less parameter such as ``?attach`` is ``attach=``),
  sorted and ``&``-joined;
- HEADERS: ``enc(name):enc(value)`` for every header with a non-empty stripped value whose lowercase name starts
  with ``x-bce-`` or is in the signed set (when the auth string names none, the SDK default ``host``,
  ``content-md5``, ``content-length``, ``content-type``), sorted and ``\\n``-joined;

where ``enc`` percent-encodes UTF-8 bytes except ``A-Z a-z 0-9 - . _ ~`` with uppercase hex. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

AUTH_PREFIX = "bce-auth-v1"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DEFAULT_SIGNED_HEADERS = frozenset({"host", "content-md5", "content-length", "content-type"})
BCE_HEADER_PREFIX = "x-bce-"

Query = Mapping[str, str] | Iterable[tuple[str, str]]


class AuthError(Exception):
    """A request that must be refused with 403 AccessDenied; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def uri_encode(value: str, *, encode_slash: bool = True) -> str:
    """BCE's canonical percent-encoding (``baidubce.utils.normalize_string``)."""
    return quote(value.encode("utf-8"), safe="" if encode_slash else "/")


def canonical_time(moment: datetime) -> str:
    """``moment`` in the BCE timestamp format (naive values are taken as UTC)."""
    return _as_utc(moment).strftime(TIME_FORMAT)


def canonical_query(query: Query) -> str:
    items = query.items() if isinstance(query, Mapping) else query
    return "&".join(sorted(f"{uri_encode(k)}={uri_encode(v or '')}" for k, v in items))


def canonical_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]], signed: frozenset[str],
                      *, all_bce_headers: bool = True) -> str:
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = []
    for name, raw in items:
        key = name.strip().lower()
        value = str(raw).strip()
        if not value or key == "authorization":
            continue
        if key in signed or (all_bce_headers and key.startswith(BCE_HEADER_PREFIX)):
            lines.append(f"{uri_encode(key)}:{uri_encode(value)}")
    return "\n".join(sorted(lines))


def signature(secret: str, auth_prefix: str, string_to_sign: str) -> str:
    """``auth_prefix`` is ``bce-auth-v1/{ak}/{timestamp}/{expiration}``."""
    signing_key = hmac.new(secret.encode(), auth_prefix.encode(), hashlib.sha256).hexdigest()
    return hmac.new(signing_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def verify(method: str, path: str, query: Mapping[str, str] | list[tuple[str, str]], headers: Mapping[str, str],
           credentials: Mapping[str, str], now: datetime, max_skew_s: float = 1800) -> str:
    """Return the access key that correctly signed this request, or raise AuthError.

    ``path`` is the request path without the query string, as received (aiohttp: ``request.rel_url.raw_path``;
    the decoded ``request.path`` works too for paths made of unreserved characters); ``query`` every parameter
    (aiohttp's ``request.query`` multidict, or pairs); ``headers`` the request headers (a case-insensitive or
    lowercase-keyed mapping, or aiohttp's ``request.headers``); ``credentials`` access key → secret key.
    The auth string's validity window is [timestamp - max_skew_s, timestamp + expiration]; an ``x-bce-date``
    header, when present, must be a valid timestamp within ``max_skew_s`` of ``now``.
    """
    header_items = list(headers.items())
    auth = _header(header_items, "authorization")
    if auth is None:
        raise AuthError("missing Authorization header")
    parts = auth.strip().split("/")
    if len(parts) != 6 or parts[0] != AUTH_PREFIX:
        raise AuthError(f"malformed Authorization header: expected '{AUTH_PREFIX}/accessKey/timestamp/"
                        "expirationSeconds/signedHeaders/signature'")
    _, access_key, stamp, expiration_text, signed_text, given = parts
    if not access_key or not given:
        raise AuthError("malformed Authorization header: empty access key or signature")
    signed_at = _parse_time(stamp, "Authorization timestamp")
    try:
        expiration = int(expiration_text)
    except ValueError:
        raise AuthError(f"malformed Authorization header: bad expiration {expiration_text!r}") from None
    if expiration <= 0:
        raise AuthError(f"malformed Authorization header: expiration must be positive, got {expiration}")
    secret = credentials.get(access_key)
    if secret is None:
        raise AuthError(f"unknown access key {access_key!r}")

    now_utc = _as_utc(now)
    if now_utc > signed_at + timedelta(seconds=expiration):
        raise AuthError(f"request expired: signed at {stamp} for {expiration}s, now {canonical_time(now_utc)}")
    if signed_at - now_utc > timedelta(seconds=max_skew_s):
        raise AuthError(f"request timestamp {stamp} is too far in the future (now {canonical_time(now_utc)})")
    bce_date = _header(header_items, "x-bce-date")
    if bce_date is not None:
        sent_at = _parse_time(bce_date.strip(), "x-bce-date")
        if abs((sent_at - now_utc).total_seconds()) > max_skew_s:
            raise AuthError(f"x-bce-date {bce_date.strip()} is more than {max_skew_s:g}s from now "
                            f"({canonical_time(now_utc)})")

    names = [n.strip().lower() for n in signed_text.split(";") if n.strip()]
    query_text = canonical_query(query)
    auth_prefix = "/".join(parts[:4])
    # The Python SDK always signs every x-bce-* header besides the named ones; Go-style signers name every header
    # they sign. Both forms cover every header the auth string names, so either is accepted.
    header_forms = {canonical_headers(header_items, frozenset(names) if names else DEFAULT_SIGNED_HEADERS)}
    if names:
        header_forms.add(canonical_headers(header_items, frozenset(names), all_bce_headers=False))
    path_forms = {path, uri_encode(unquote(path), encode_slash=False)}
    for uri in sorted(path_forms):
        for header_text in sorted(header_forms):
            expected = signature(secret, auth_prefix, "\n".join([method.upper(), uri, query_text, header_text]))
            if hmac.compare_digest(expected, given.lower()):
                return access_key
    raise AuthError("signature mismatch: the request was not signed with this access key's secret, "
                    "or was altered after signing")


def _header(items: list[tuple[str, str]], name: str) -> str | None:
    for key, value in items:
        if key.strip().lower() == name:
            return str(value)
    return None


def _parse_time(text: str, what: str) -> datetime:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise AuthError(f"malformed {what} {text!r}: expected YYYY-MM-DDTHH:MM:SSZ") from None


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
