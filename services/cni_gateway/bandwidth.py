"""A pod's bandwidth limits (pure): the CNI `bandwidth` capability (runtimeConfig, what the runtime passes from the
pod's annotations), else the standard annotations on the pod's record, `kubernetes.io/ingress-bandwidth` (traffic
into the pod) and `kubernetes.io/egress-bandwidth` (out of it), quantities in bits per second (`10M`, `1G`, `500k`).

Kubelet's range is kept: 1k to 1P bits/s. The kernel's token bucket counts bytes per second in 32 bits, so a limit
above 32 Gbit/s cannot be shaped and is no limit. The burst (bytes let through at once) is the runtime's when it
gives one, else 100 ms of traffic; either way at least 16 KiB and at most one second of traffic (containerd passes
2^32-1 bits, which would let half a gigabyte through unshaped)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.records import Bandwidth

INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
MIN_BPS = 1_000
MAX_BPS = 10**15
SHAPEABLE_BPS = 32 * 10**9
MIN_BURST = 16 * 1024
CHAINED = "chained"  # our plugin's `bandwidth` key when a chained `bandwidth` plugin does the shaping

_QUANTITY = re.compile(r"^([+]?[0-9]+(?:\.[0-9]*)?|[+]?\.[0-9]+)"
                       r"(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$")
_SUFFIX = {"m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
           "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
           "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
           "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}


class BandwidthError(ValueError):
    """A limit that cannot be used; the message names where it came from and why."""


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (`10M`, `1.5Gi`, `100e3`); ValueError when it is not one."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity (e.g. 10M, 1G, 500k)")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number)
        if exponent:
            value *= Decimal(10) ** int(exponent[1:])
    except (InvalidOperation, ValueError):
        raise ValueError(f"{text!r} is not a quantity") from None
    return value * _SUFFIX[suffix] if suffix else value


def annotation_bps(annotations: Mapping[str, str], key: str) -> int | None:
    """The limit an annotation sets in bits per second (None: not set); BandwidthError when malformed or out of
    kubelet's range."""
    if key not in annotations:
        return None
    raw = annotations[key]
    try:
        value = parse_quantity(raw)
    except ValueError as err:
        raise BandwidthError(f"annotation {key}={raw!r}: {err}") from None
    if not MIN_BPS <= value <= MAX_BPS:
        raise BandwidthError(f"annotation {key}={raw!r}: must be between 1k and 1P bits per second")
    return int(value)


def _runtime_number(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BandwidthError(f"runtimeConfig.bandwidth.{key}={value!r}: must be a number >= 0")
    return int(value) or None


def burst_bytes(bps: int, burst_bits: int | None) -> int:
    second = max(bps // 8, MIN_BURST)
    wanted = burst_bits // 8 if burst_bits else bps // 80  # the runtime's, else 100 ms of traffic
    return max(MIN_BURST, min(wanted, second))


def limits(ingress_bps: int | None, egress_bps: int | None, ingress_burst: int | None = None,
           egress_burst: int | None = None) -> Bandwidth | None:
    """The limits worth shaping (a rate above what the kernel can shape is no limit); None when there are none."""
    ingress = ingress_bps if ingress_bps and ingress_bps <= SHAPEABLE_BPS else None
    egress = egress_bps if egress_bps and egress_bps <= SHAPEABLE_BPS else None
    if ingress is None and egress is None:
        return None
    return Bandwidth(ingress_bps=ingress, ingress_burst_bytes=burst_bytes(ingress, ingress_burst) if ingress else None,
                     egress_bps=egress, egress_burst_bytes=burst_bytes(egress, egress_burst) if egress else None)


def bandwidth_of(config: Mapping[str, Any], annotations: Mapping[str, str]) -> Bandwidth | None:
    """The pod's limits: the runtime's (`runtimeConfig.bandwidth`) when it passed any, else the annotations; None
    when a chained `bandwidth` plugin shapes instead. BandwidthError names what is wrong."""
    if config.get("bandwidth") == CHAINED:
        return None
    runtime = (config.get("runtimeConfig") or {}).get("bandwidth")
    if isinstance(runtime, Mapping) and runtime:
        rates = [_runtime_number(runtime, k) for k in ("ingressRate", "egressRate", "ingressBurst", "egressBurst")]
        for key, rate in (("ingressRate", rates[0]), ("egressRate", rates[1])):
            if rate is not None and not MIN_BPS <= rate <= MAX_BPS:
                raise BandwidthError(f"runtimeConfig.bandwidth.{key}={rate}: must be between 1k and 1P bits/s")
        return limits(*rates)
    if runtime is not None and not isinstance(runtime, Mapping):
        raise BandwidthError("runtimeConfig.bandwidth must be an object")
    return limits(annotation_bps(annotations, INGRESS_ANNOTATION), annotation_bps(annotations, EGRESS_ANNOTATION))
