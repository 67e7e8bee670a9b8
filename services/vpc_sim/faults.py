"""Per-API behaviour of the simulated cloud: latency, rate limits, random errors and scripted failures.

Everything is changeable at runtime (``FaultInjector.configure``) and deterministic: randomness comes from
``random.Random`` seeded from the config (or the injector's seed) and time from an injected clock. The models are
the JSON of the admin API (``GET|PUT /admin/faults``). Pure: no I/O, no sleeping — the HTTP layer sleeps for
``latency_s(api)`` and answers with the ``Fault`` that ``check(api)`` returns.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SIM_APIS: tuple[str, ...] = (
    "create_eni", "attach_eni", "detach_eni", "delete_eni", "get_eni", "get_eni_status", "list_enis",
    "add_private_ip", "delete_private_ip", "batch_add_private_ips", "batch_delete_private_ips",
    "get_instance", "list_instance_enis", "batch_add_instance_ips", "batch_delete_instance_ips",
    "get_subnet", "list_subnets", "get_route", "list_route_rules", "create_route_rule", "delete_route_rule",
    "get_vpc",
)
DEFAULT_API = "*"
Z_99 = 2.3263478740408408  # standard normal quantile at 0.99
LATENCY_CAP_FACTOR = 10.0  # samples are capped at this multiple of p99 so one draw cannot stall a test

_KNOWN = frozenset(SIM_APIS)


def _check_api(name: str, *, allow_default: bool = False) -> str:
    if name in _KNOWN or (allow_default and name == DEFAULT_API):
        return name
    extra = f" or {DEFAULT_API!r}" if allow_default else ""
    raise ValueError(f"unknown api {name!r}: expected one of {', '.join(SIM_APIS)}{extra}")


class LatencySpec(BaseModel):
    """Delay of one API, lognormal with this median and 99th percentile; a zero median means no delay."""

    model_config = ConfigDict(extra="forbid")

    median_ms: float = Field(default=5, ge=0)
    p99_ms: float = Field(default=20, ge=0)

    @model_validator(mode="after")
    def _p99_not_below_median(self) -> LatencySpec:
        if self.p99_ms < self.median_ms:
            raise ValueError(f"p99_ms ({self.p99_ms}) must be >= median_ms ({self.median_ms})")
        return self


class RateLimitSpec(BaseModel):
    """A token bucket: ``burst`` requests at once, refilled at ``rate_per_s``."""

    model_config = ConfigDict(extra="forbid")

    rate_per_s: float = Field(gt=0)
    burst: int = Field(ge=1)


class FailNext(BaseModel):
    """The next ``count`` calls of ``api`` fail with ``status`` and error ``code``; with ``body``, they are answered
    with ``status`` and exactly that body instead (a malformed reply: broken JSON, missing fields, an HTML 5xx
    page; then any status from 200 goes, so a "successful" reply can be the broken one)."""

    model_config = ConfigDict(extra="forbid")

    api: str
    count: int = Field(ge=1)
    code: str = Field(min_length=1)
    status: int = Field(ge=200, le=599)
    body: str | None = Field(None, max_length=1 << 20)

    @field_validator("api")
    @classmethod
    def _known_api(cls, value: str) -> str:
        return _check_api(value)

    @model_validator(mode="after")
    def _error_status_unless_raw(self) -> FailNext:
        if self.body is None and self.status < 400:
            raise ValueError(f"status {self.status} is not an error: give a body to answer a malformed reply")
        return self


class FaultConfig(BaseModel):
    """The whole fault configuration; API-keyed maps name ``SIM_APIS`` (latency also ``"*"``, the default)."""

    model_config = ConfigDict(extra="forbid")

    latency: dict[str, LatencySpec] = Field(default_factory=dict)
    rate_limits: dict[str, RateLimitSpec] = Field(default_factory=dict)
    error_rates: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    error_code: str = Field(default="InternalError", min_length=1)
    error_status: int = Field(default=500, ge=400, le=599)
    fail_next: list[FailNext] = Field(default_factory=list)
    seed: int | None = None

    @field_validator("latency")
    @classmethod
    def _latency_apis(cls, value: dict[str, LatencySpec]) -> dict[str, LatencySpec]:
        for name in value:
            _check_api(name, allow_default=True)
        return value

    @field_validator("rate_limits", "error_rates")
    @classmethod
    def _known_apis(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            _check_api(name)
        return value


class TokenBucket:
    """Starts full with ``burst`` tokens; refills continuously at ``rate`` per second up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)


@dataclass
class Fault:
    """An error the simulator answers with instead of doing the call."""

    code: str
    status: int
    message: str
    body: str | None = None  # answered as it is instead of the coded JSON error


def sample_latency_s(spec: LatencySpec, rng: random.Random) -> float:
    """One delay in seconds from the lognormal with the spec's median and p99 (capped at 10 x p99)."""
    if spec.median_ms <= 0:
        return 0.0
    mu = math.log(spec.median_ms)
    sigma = (math.log(spec.p99_ms) - mu) / Z_99
    ms = rng.lognormvariate(mu, sigma) if sigma > 0 else spec.median_ms
    return min(ms, spec.p99_ms * LATENCY_CAP_FACTOR) / 1000.0


class FaultInjector:
    """Decides, per call, how long an API takes and whether it fails.

    RNG seed: ``config.seed`` when set, else ``seed``. ``configure`` replaces the whole config (buckets start
    full again, ``fail_next`` becomes the config's list) and reseeds only when the new config has a seed, so a
    seedless reconfiguration keeps the random sequence going. Latency and errors draw from separate streams, so
    the error sequence does not depend on how many latency samples were taken.
    """

    def __init__(self, config: FaultConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 seed: int = 0) -> None:
        self._clock = clock
        self._seed = seed
        self._error_rng = random.Random()
        self._latency_rng = random.Random()
        self._config = FaultConfig()
        self._buckets: dict[str, TokenBucket] = {}
        self._fail_next: list[FailNext] = []
        self._reseed(seed)
        self.configure(config if config is not None else FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        config = config.model_copy(deep=True)
        self._config = config
        self._buckets = {api: TokenBucket(spec.rate_per_s, spec.burst, self._clock)
                         for api, spec in config.rate_limits.items()}
        self._fail_next = [entry.model_copy() for entry in config.fail_next]
        if config.seed is not None:
            self._reseed(config.seed)

    def add_fail_next(self, entry: FailNext) -> None:
        self._fail_next.append(entry.model_copy())

    def reset(self) -> None:
        """No faults, no delay, no limits, and the RNG back at the constructor's seed."""
        self.configure(FaultConfig())
        self._reseed(self._seed)

    def latency_s(self, api: str) -> float:
        _check_api(api)
        spec = self._config.latency.get(api) or self._config.latency.get(DEFAULT_API)
        return 0.0 if spec is None else sample_latency_s(spec, self._latency_rng)

    def check(self, api: str) -> Fault | None:
        """The fault this call of ``api`` hits, if any: scripted failures, then the rate limit, then chance."""
        _check_api(api)
        for index, entry in enumerate(self._fail_next):
            if entry.api == api:
                entry.count -= 1
                if entry.count == 0:
                    del self._fail_next[index]
                return Fault(entry.code, entry.status, f"injected failure for {api}", entry.body)
        bucket = self._buckets.get(api)
        if bucket is not None and not bucket.try_take():
            return Fault("RateLimit", 429, f"request rate limit exceeded for {api}")
        rate = self._config.error_rates.get(api, 0.0)
        if rate > 0 and self._error_rng.random() < rate:
            return Fault(self._config.error_code, self._config.error_status, f"injected random error for {api}")
        return None

    def snapshot(self) -> FaultConfig:
        """The current config, ``fail_next`` holding what is left of each scripted failure."""
        return self._config.model_copy(update={"fail_next": [entry.model_copy() for entry in self._fail_next]},
                                       deep=True)

    def _reseed(self, seed: int) -> None:
        self._error_rng.seed(f"errors:{seed}")
        self._latency_rng.seed(f"latency:{seed}")
