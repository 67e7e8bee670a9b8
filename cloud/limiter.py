"""Client-side rate limits for the cloud APIs: one asyncio token bucket per `CloudApi`.

The cloud throttles each API per account (HTTP 429 `RateLimit`); pacing our own calls below those limits keeps
throttling rare, and the adapter's bounded retries handle the rest. A bucket holds at most `burst` tokens and
refills at `rate_per_s`. Waiters are served first come, first served: each `acquire` reserves the next token at
once (the bucket may go into debt) and then sleeps until that token has been earned, so a later caller can never
overtake an earlier one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from cloud.port import CloudApi

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# per-API (rate/s, burst), keyed by CloudApi or by its value ("list_enis")
Overrides = Mapping[CloudApi, tuple[float, int]] | Mapping[str, tuple[float, int]]

# (requests per second, burst). Writes follow the reference system (cce-network-v2's per-API BCE limits); reads
# are not limited there, so they get a roomy 10/s with a burst of 20, except LIST_ENIS which the reference keeps at
# 1/s: it is the costliest read (a whole VPC's ENIs) and the periodic resync is its only big user.
_BATCH_IP = (5.0, 10)
_READ = (10.0, 20)
DEFAULT_LIMITS: Mapping[CloudApi, tuple[float, int]] = {
    CloudApi.ADD_PRIVATE_IPS: _BATCH_IP,
    CloudApi.REMOVE_PRIVATE_IPS: _BATCH_IP,
    CloudApi.ADD_PRIMARY_NIC_IPS: _BATCH_IP,
    CloudApi.REMOVE_PRIMARY_NIC_IPS: _BATCH_IP,
    CloudApi.CREATE_ENI: (5.0, 5),
    CloudApi.ATTACH_ENI: (5.0, 5),
    CloudApi.DETACH_ENI: (5.0, 5),
    CloudApi.DELETE_ENI: (1.0, 1),
    CloudApi.LIST_ENIS: (1.0, 1),
    CloudApi.GET_ENI: _READ,
    CloudApi.GET_INSTANCE: _READ,
    CloudApi.GET_SUBNET: _READ,
    CloudApi.LIST_SUBNETS: _READ,
    CloudApi.LIST_ROUTE_RULES: _READ,
    CloudApi.GET_VPC: _READ,
    CloudApi.GET_ROUTE_TABLE: _READ,
    CloudApi.CREATE_ROUTE_RULE: (5.0, 10),
    CloudApi.DELETE_ROUTE_RULE: (5.0, 10),
}


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; `acquire` waits its turn, `try_acquire` never waits."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, not {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)  # negative while callers wait: the tokens they have already reserved
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    @property
    def tokens(self) -> float:
        """Tokens available now; negative when callers are queued."""
        self._refill()
        return self._tokens

    def try_acquire(self) -> bool:
        """Take a token if one is available now (and nobody is queued ahead); never waits."""
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def acquire(self) -> float:
        """Take a token, waiting behind earlier callers if need be; returns the seconds this caller was held."""
        self._refill()
        self._tokens -= 1  # reserved synchronously, so reservations follow call order
        wait = max(0.0, -self._tokens / self.rate_per_s)
        if wait > 0:
            try:
                await self._sleep(wait)
            except asyncio.CancelledError:
                self._tokens += 1  # hand the reservation back
                raise
        return wait


class RateLimits:
    """One `TokenBucket` per `CloudApi`: the reference defaults, overridden per API by `(rate, burst)` pairs.

    Override keys are `CloudApi` members or their values (`"list_enis"`), so settings files can name them.
    """

    def __init__(self, overrides: Overrides | None = None, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        limits = dict(DEFAULT_LIMITS)
        for key, (rate, burst) in (overrides or {}).items():
            try:
                api = CloudApi(key)
            except ValueError:
                raise ValueError(f"unknown cloud API {key!r} in rate limits") from None
            limits[api] = (float(rate), int(burst))
        self.limits: Mapping[CloudApi, tuple[float, int]] = limits
        self._buckets = {api: TokenBucket(rate, burst, clock, sleep) for api, (rate, burst) in limits.items()}

    def __getitem__(self, api: CloudApi) -> TokenBucket:
        return self._buckets[api]

    async def acquire(self, api: CloudApi) -> float:
        return await self._buckets[api].acquire()
