"""Unit tier: the simulator's per-API latency, rate limits and injected failures, on a fake clock and a seed."""

from __future__ import annotations

import random
import statistics

import pytest
from pydantic import ValidationError

from services.vpc_sim.faults import (
    SIM_APIS,
    FailNext,
    Fault,
    FaultConfig,
    FaultInjector,
    LatencySpec,
    RateLimitSpec,
    TokenBucket,
    sample_latency_s,
)
from tests.fake_clock import FakeClock

pytestmark = pytest.mark.unit


def takes(bucket: TokenBucket, n: int) -> list[bool]:
    return [bucket.try_take() for _ in range(n)]


def test_a_bucket_allows_its_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=2, burst=5, clock=FakeClock())
    assert takes(bucket, 6) == [True] * 5 + [False]


def test_a_bucket_refills_continuously_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    takes(bucket, 5)
    clock.advance(0.25)
    assert not bucket.try_take()
    clock.advance(0.25)
    assert bucket.try_take()
    clock.advance(1.5)
    assert takes(bucket, 4) == [True, True, True, False]
    clock.advance(3600)
    assert bucket.tokens == 5


def test_a_bucket_needs_a_positive_rate_and_burst() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1, clock=FakeClock())


def test_fail_next_returns_exactly_n_faults_with_the_given_code_then_none() -> None:
    inj = FaultInjector(FaultConfig(), clock=FakeClock())
    inj.add_fail_next(FailNext(api="attach_eni", count=3, code="EniStatusInvalid", status=409))
    assert inj.check("get_eni") is None
    faults = [inj.check("attach_eni") for _ in range(5)]
    assert faults[:3] == [Fault("EniStatusInvalid", 409, "injected failure for attach_eni")] * 3
    assert faults[3:] == [None, None]
    assert inj.snapshot().fail_next == []


def test_fail_next_entries_for_one_api_are_used_first_in_first_out() -> None:
    inj = FaultInjector(FaultConfig(fail_next=[FailNext(api="create_eni", count=1, code="A", status=500)]),
                        clock=FakeClock())
    inj.add_fail_next(FailNext(api="create_eni", count=2, code="B", status=503))
    codes = [f.code if f else None for f in (inj.check("create_eni") for _ in range(4))]
    assert codes == ["A", "B", "B", None]


def test_fail_next_comes_before_the_rate_limit_and_does_not_spend_a_token() -> None:
    config = FaultConfig(rate_limits={"list_enis": RateLimitSpec(rate_per_s=1, burst=1)},
                         fail_next=[FailNext(api="list_enis", count=1, code="InternalError", status=500)])
    inj = FaultInjector(config, clock=FakeClock())
    codes = [f.code if f else None for f in (inj.check("list_enis") for _ in range(3))]
    assert codes == ["InternalError", None, "RateLimit"]


def test_a_rate_limited_api_answers_429_ratelimit_and_others_are_unaffected() -> None:
    clock = FakeClock()
    inj = FaultInjector(FaultConfig(rate_limits={"create_eni": RateLimitSpec(rate_per_s=10, burst=2)}), clock=clock)
    assert [inj.check("create_eni") for _ in range(2)] == [None, None]
    fault = inj.check("create_eni")
    assert fault is not None
    assert (fault.code, fault.status) == ("RateLimit", 429)
    assert all(inj.check("get_eni") is None for _ in range(100))
    clock.advance(0.1)
    assert inj.check("create_eni") is None


def error_sequence(seed: int, n: int = 10_000, rate: float = 0.1) -> list[bool]:
    inj = FaultInjector(FaultConfig(error_rates={"get_subnet": rate}, seed=seed), clock=FakeClock())
    return [inj.check("get_subnet") is not None for _ in range(n)]


def test_an_error_rate_fails_about_that_share_of_calls() -> None:
    failures = sum(error_sequence(seed=7))
    assert 850 <= failures <= 1150  # 10k draws at p=0.1: sd = 30, so +-5 sd


def test_the_same_seed_gives_the_same_error_sequence_and_another_seed_does_not() -> None:
    assert error_sequence(seed=7) == error_sequence(seed=7)
    assert error_sequence(seed=7) != error_sequence(seed=8)


def test_the_injector_seed_is_used_when_the_config_has_none() -> None:
    def run(seed: int) -> list[bool]:
        inj = FaultInjector(FaultConfig(error_rates={"get_subnet": 0.5}), clock=FakeClock(), seed=seed)
        return [inj.check("get_subnet") is not None for _ in range(200)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_random_errors_use_the_configured_code_and_status() -> None:
    inj = FaultInjector(FaultConfig(error_rates={"delete_eni": 1.0}, error_code="ServiceUnavailable",
                                    error_status=503), clock=FakeClock())
    fault = inj.check("delete_eni")
    assert fault is not None
    assert (fault.code, fault.status) == ("ServiceUnavailable", 503)


def test_latency_samples_have_a_median_near_the_spec_median_and_a_p99_near_the_spec_p99() -> None:
    spec = LatencySpec(median_ms=5, p99_ms=20)
    rng = random.Random(42)
    samples = sorted(sample_latency_s(spec, rng) for _ in range(20_000))
    assert statistics.median(samples) == pytest.approx(0.005, rel=0.05)
    assert samples[int(0.99 * len(samples))] == pytest.approx(0.020, rel=0.15)
    assert min(samples) > 0


def test_latency_uses_the_api_spec_then_the_default_then_none() -> None:
    config = FaultConfig(latency={"*": LatencySpec(median_ms=50, p99_ms=50),
                                  "get_eni": LatencySpec(median_ms=2, p99_ms=2)})
    inj = FaultInjector(config, clock=FakeClock())
    assert inj.latency_s("get_eni") == pytest.approx(0.002)
    assert inj.latency_s("list_subnets") == pytest.approx(0.05)
    assert FaultInjector(FaultConfig(), clock=FakeClock()).latency_s("get_eni") == 0


def test_a_zero_latency_spec_means_no_delay() -> None:
    inj = FaultInjector(FaultConfig(latency={"*": LatencySpec(median_ms=0, p99_ms=0)}), clock=FakeClock())
    assert {inj.latency_s(api) for api in SIM_APIS} == {0.0}


def test_latency_samples_are_the_same_for_the_same_seed() -> None:
    def run() -> list[float]:
        inj = FaultInjector(FaultConfig(latency={"*": LatencySpec()}, seed=3), clock=FakeClock())
        return [inj.latency_s("get_route") for _ in range(50)]

    assert run() == run()


def test_a_latency_spec_with_p99_below_its_median_is_refused() -> None:
    with pytest.raises(ValidationError, match="p99_ms"):
        LatencySpec(median_ms=10, p99_ms=5)


def test_configure_replaces_the_limits_at_runtime() -> None:
    clock = FakeClock()
    inj = FaultInjector(FaultConfig(rate_limits={"create_eni": RateLimitSpec(rate_per_s=1, burst=1)}), clock=clock)
    assert inj.check("create_eni") is None
    assert inj.check("create_eni") is not None
    inj.configure(FaultConfig(rate_limits={"delete_eni": RateLimitSpec(rate_per_s=1, burst=1)}))
    assert all(inj.check("create_eni") is None for _ in range(10))
    assert inj.check("delete_eni") is None
    fault = inj.check("delete_eni")
    assert fault is not None
    assert fault.code == "RateLimit"


def test_configure_with_a_seed_restarts_the_random_sequence() -> None:
    config = FaultConfig(error_rates={"get_subnet": 0.5}, seed=11)
    inj = FaultInjector(config, clock=FakeClock())
    first = [inj.check("get_subnet") is None for _ in range(100)]
    inj.configure(config)
    assert [inj.check("get_subnet") is None for _ in range(100)] == first


def test_reset_removes_every_fault() -> None:
    config = FaultConfig(error_rates={"get_eni": 1.0}, latency={"*": LatencySpec()},
                         rate_limits={"get_eni": RateLimitSpec(rate_per_s=1, burst=1)},
                         fail_next=[FailNext(api="get_eni", count=5, code="X", status=500)])
    inj = FaultInjector(config, clock=FakeClock())
    inj.reset()
    assert all(inj.check("get_eni") is None for _ in range(10))
    assert inj.latency_s("get_eni") == 0
    assert inj.snapshot() == FaultConfig()


def test_a_snapshot_round_trips_through_json_with_the_remaining_fail_next_counts() -> None:
    config = FaultConfig(latency={"*": LatencySpec(median_ms=3, p99_ms=9)},
                         rate_limits={"batch_add_private_ips": RateLimitSpec(rate_per_s=2.5, burst=4)},
                         error_rates={"list_route_rules": 0.25}, error_code="ServiceBusy", error_status=503,
                         fail_next=[FailNext(api="create_route_rule", count=3, code="RouteRuleRepeated", status=400)],
                         seed=99)
    inj = FaultInjector(config, clock=FakeClock())
    inj.check("create_route_rule")
    snap = inj.snapshot()
    assert snap.fail_next[0].count == 2
    assert FaultConfig.model_validate_json(snap.model_dump_json()) == snap
    assert snap.model_copy(update={"fail_next": config.fail_next}) == config
    assert config.fail_next[0].count == 3  # the caller's config is never changed


@pytest.mark.parametrize("config", [
    {"rate_limits": {"create_enis": {"rate_per_s": 1, "burst": 1}}},
    {"error_rates": {"*": 0.5}},
    {"latency": {"get_everything": {}}},
    {"fail_next": [{"api": "nope", "count": 1, "code": "X", "status": 500}]},
])
def test_a_config_naming_an_unknown_api_is_refused(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="unknown api"):
        FaultConfig.model_validate(config)


@pytest.mark.parametrize("config", [
    {"error_rates": {"get_eni": 1.5}},
    {"fail_next": [{"api": "get_eni", "count": 0, "code": "X", "status": 500}]},
    {"rate_limits": {"get_eni": {"rate_per_s": 0, "burst": 1}}},
    {"surprise": True},
])
def test_a_config_with_bad_values_is_refused(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FaultConfig.model_validate(config)


def test_asking_about_an_unknown_api_is_an_error() -> None:
    inj = FaultInjector(FaultConfig(), clock=FakeClock())
    with pytest.raises(ValueError, match="unknown api"):
        inj.check("create_enis")


def test_fail_next_with_a_body_answers_that_body_with_any_status_from_200() -> None:
    inj = FaultInjector(FaultConfig(), clock=FakeClock())
    inj.add_fail_next(FailNext(api="get_eni", count=1, code="Broken", status=200, body='{"eniId": '))
    fault = inj.check("get_eni")
    assert fault is not None and (fault.status, fault.body) == (200, '{"eniId": ')
    assert inj.check("get_eni") is None


def test_fail_next_without_a_body_needs_an_error_status() -> None:
    with pytest.raises(ValidationError, match="not an error"):
        FailNext(api="get_eni", count=1, code="X", status=200)
