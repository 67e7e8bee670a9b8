"""Unit tier: the contracts, the subject registry and the generated bus API description."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas import apidoc
from schemas.base import from_subject_token, subject_token
from schemas.errors import DESCRIPTIONS, CceError, ErrorReason
from schemas.messages import AllocateRequest, PodRef
from schemas.records import Eni, NetResourceSet
from schemas.subjects import BUCKETS, REQUESTS

pytestmark = pytest.mark.unit


def test_generated_bus_api_is_up_to_date() -> None:
    stale = apidoc.stale_files()
    assert not stale, f"run `python -m schemas.apidoc`; stale: {[str(p) for p in stale]}"


def test_asyncapi_document_names_every_subject_and_message() -> None:
    doc = json.loads(apidoc.ASYNCAPI_FILE.read_text())
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values() if c["address"]}
    for req in REQUESTS:
        assert f"{req.prefix}.{{node}}" in addresses
        assert req.request.__name__ in doc["components"]["messages"]
        assert req.reply.__name__ in doc["components"]["schemas"]
    assert "cce.events.{kind}.{node}.{what}" in addresses
    assert set(doc["x-error-reasons"]) == {r.value for r in ErrorReason}


def test_every_reason_has_a_description() -> None:
    assert set(DESCRIPTIONS) == set(ErrorReason)


def test_the_required_reasons_exist() -> None:
    for code in ("IPPoolExhausted", "WaitCreateMoreENI", "ENICapacityExceed", "SubnetNoMoreIP",
                 "NoAvailableSubnet", "CloudThrottled", "NodeNotRegistered", "InvalidRequest", "Timeout"):
        assert ErrorReason(code).value == code


def test_subjects_end_with_the_node_token() -> None:
    for req in REQUESTS:
        assert req.for_node("node-1").endswith(".node-1")
        assert req.pattern.endswith(".*")
    assert len({r.prefix for r in REQUESTS}) == len(REQUESTS)


@pytest.mark.parametrize("name", ["node-1", "ip-10-0-0-1.ec2.internal", "a"])
def test_node_names_round_trip_through_subject_tokens(name: str) -> None:
    token = subject_token(name)
    assert "." not in token
    assert from_subject_token(token) == name


@pytest.mark.parametrize("bad", ["", "a b", "a*", "a>"])
def test_unsafe_tokens_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="subject token"):
        subject_token(bad)


def test_contracts_ignore_unknown_fields_so_they_can_grow() -> None:
    req = AllocateRequest.model_validate(
        {"node": "n1", "container_id": "abc", "pod": {"namespace": "d", "name": "p"}, "added_later": 1}
    )
    assert req.ifname == "eth0"
    assert req.schema_version == 1


@pytest.mark.parametrize(("field", "value"), [("node", "Bad_Node"), ("ifname", "x" * 16),
                                         ("container_id", "../etc"), ("wait_s", -1)])
def test_bad_requests_fail_validation_naming_the_field(field: str, value: object) -> None:
    data = {"node": "n1", "container_id": "abc", "pod": PodRef(namespace="d", name="p").model_dump()}
    data[field] = value
    with pytest.raises(ValidationError) as info:
        AllocateRequest.model_validate(data)
    assert info.value.errors()[0]["loc"][0] == field


def test_eni_gateway_is_the_first_address_of_its_subnet() -> None:
    eni = Eni(eni_id="eni-1", node="n1", instance_id="i-1", subnet_id="sbn-1", subnet_cidr="10.0.1.0/24",
              private_ips=[{"ip": "10.0.1.5", "primary": True}, {"ip": "10.0.1.6"}])
    assert str(eni.gateway) == "10.0.1.1"
    assert str(eni.primary_ip) == "10.0.1.5"
    assert [str(i) for i in eni.secondary_ips] == ["10.0.1.6"]


def test_buckets_have_one_writer_and_unique_names() -> None:
    assert len({b.name for b in BUCKETS}) == len(BUCKETS)
    nrs = NetResourceSet.model_validate({"name": "n1", "spec": {"instance_id": "i-1", "instance_type": "BCC",
                                                                "zone": "a", "cpus": 4, "memory_mib": 8192}})
    assert nrs.spec.pool.min_allocate == 10
    assert nrs.spec.pool.pre_allocate == 2
    assert nrs.spec.pool.max_above_watermark == 24


def test_errors_round_trip_through_the_reply_body() -> None:
    err = CceError(ErrorReason.SUBNET_NO_MORE_IP, "sbn-1 is full", subnet_id="sbn-1")
    back = CceError.from_reply(err.to_reply())
    assert (back.reason, back.message, back.details) == (err.reason, err.message, err.details)
    assert not back.retryable
