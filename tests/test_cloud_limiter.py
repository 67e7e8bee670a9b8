"""The per-API token buckets: burst, pacing, FIFO order, wait times, defaults and overrides."""

from __future__ import annotations

import asyncio
import time

import pytest

from cloud.limiter import DEFAULT_LIMITS, RateLimits, TokenBucket
from cloud.port import CloudApi
from tests.fake_clock import FakeClock

pytestmark = pytest.mark.unit


class StillClock(FakeClock):
    """Sleeping does not move this clock: every caller reserves at the same instant."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


async def test_a_full_bucket_serves_its_burst_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, 10, clock=clock, sleep=clock.sleep)
    waits = [await bucket.acquire() for _ in range(10)]
    assert waits == [0.0] * 10
    assert clock.sleeps == []


async def test_after_the_burst_callers_are_paced_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, 10, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        await bucket.acquire()
    start = clock.now
    waits = [await bucket.acquire() for _ in range(5)]
    assert waits == pytest.approx([0.2] * 5)
    assert clock.now - start == pytest.approx(1.0)


async def test_the_bucket_refills_up_to_its_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, 3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.now += 0.2
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.now += 3600
    assert bucket.tokens == pytest.approx(3)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


async def test_concurrent_callers_reserve_tokens_in_arrival_order() -> None:
    clock = StillClock()
    bucket = TokenBucket(4, 2, clock=clock, sleep=clock.sleep)
    waits = await asyncio.gather(*(bucket.acquire() for _ in range(6)))
    assert waits == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1.0])


async def test_try_acquire_does_not_jump_the_queue() -> None:
    clock = StillClock()
    bucket = TokenBucket(1, 1, clock=clock, sleep=clock.sleep)
    await bucket.acquire()
    waiter = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)
    clock.now += 1.0  # the waiter's token is earned, and it is the waiter's
    assert not bucket.try_acquire()
    assert await waiter == pytest.approx(1.0)


async def test_concurrent_callers_are_served_first_come_first_served() -> None:
    bucket = TokenBucket(200, 1)  # real clock: a token every 5 ms
    served: list[int] = []

    async def caller(i: int) -> float:
        waited = await bucket.acquire()
        served.append(i)
        return waited

    started = time.monotonic()
    waits = await asyncio.gather(*(caller(i) for i in range(6)))
    elapsed = time.monotonic() - started
    assert served == list(range(6))
    assert waits == sorted(waits)
    assert waits[0] == 0
    assert waits[-1] == pytest.approx(5 / 200, abs=0.003)
    assert elapsed >= 5 / 200 - 0.002


async def test_a_cancelled_waiter_gives_its_token_back() -> None:
    bucket = TokenBucket(10, 1)  # real clock: a token every 100 ms
    await bucket.acquire()
    cancelled = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await bucket.acquire() < 0.15  # not 0.2: the cancelled reservation was returned


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst)


@pytest.mark.parametrize(
    ("api", "limit"),
    [
        (CloudApi.ADD_PRIVATE_IPS, (5, 10)),
        (CloudApi.REMOVE_PRIVATE_IPS, (5, 10)),
        (CloudApi.ADD_PRIMARY_NIC_IPS, (5, 10)),
        (CloudApi.REMOVE_PRIMARY_NIC_IPS, (5, 10)),
        (CloudApi.CREATE_ENI, (5, 5)),
        (CloudApi.ATTACH_ENI, (5, 5)),
        (CloudApi.DETACH_ENI, (5, 5)),
        (CloudApi.DELETE_ENI, (1, 1)),
        (CloudApi.LIST_ENIS, (1, 1)),
        (CloudApi.GET_ENI, (10, 20)),
        (CloudApi.GET_INSTANCE, (10, 20)),
        (CloudApi.GET_SUBNET, (10, 20)),
        (CloudApi.LIST_SUBNETS, (10, 20)),
        (CloudApi.LIST_ROUTE_RULES, (10, 20)),
        (CloudApi.CREATE_ROUTE_RULE, (5, 10)),
        (CloudApi.DELETE_ROUTE_RULE, (5, 10)),
    ],
)
def test_default_limits_follow_the_reference_system(api: CloudApi, limit: tuple[float, int]) -> None:
    bucket = RateLimits()[api]
    assert (bucket.rate_per_s, bucket.burst) == limit


def test_every_api_has_a_default_limit() -> None:
    assert set(DEFAULT_LIMITS) == set(CloudApi)


def test_limits_are_overridable_per_api_by_member_or_by_name() -> None:
    limits = RateLimits({CloudApi.DELETE_ENI: (2, 4), "list_enis": (3.5, 7)})
    assert (limits[CloudApi.DELETE_ENI].rate_per_s, limits[CloudApi.DELETE_ENI].burst) == (2, 4)
    assert (limits[CloudApi.LIST_ENIS].rate_per_s, limits[CloudApi.LIST_ENIS].burst) == (3.5, 7)
    assert limits.limits[CloudApi.CREATE_ENI] == (5, 5)


def test_an_unknown_api_in_the_overrides_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown cloud API"):
        RateLimits({"create_vpc": (1, 1)})


async def test_each_api_has_its_own_bucket() -> None:
    clock = StillClock()
    limits = RateLimits(clock=clock, sleep=clock.sleep)
    assert await limits.acquire(CloudApi.DELETE_ENI) == 0
    assert await limits.acquire(CloudApi.DELETE_ENI) == pytest.approx(1.0)
    assert await limits.acquire(CloudApi.LIST_ENIS) == 0
