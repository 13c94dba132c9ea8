"""ADT -> Patient/Encounter (adapters.hl7v2.mapping.adt.translate), without the database."""

from __future__ import annotations

import pytest

from adapters.hl7v2.errors import Hl7Error
from adapters.hl7v2.mapping import adt
from adapters.hl7v2.mapping.translation import Context
from adapters.hl7v2.message import parse

CTX = Context(sender_facility="XINGFU_THC", organization=None)
PID = "PID|1||XF0042^^^XINGFU_THC^MR||王^秀英||19520314|F"
PV1 = "PV1|1|O|全科门诊^^^XINGFU_THC||||0012^李^卫民||||||||||||V20261120-07"


def adt_message(event: str, evn: str, version: str = "2.4") -> bytes:
    msh = (
        f"MSH|^~\\&|HIS|XINGFU_THC|YILIAN|COUNTY_HOSP|20261120101500+0800||ADT^{event}|"
        f"A-1|P|{version}"
    )
    return "\r".join([msh, evn, PID, PV1]).encode() + b"\r"


@pytest.mark.parametrize("event", ["A01", "A04", "A08"])
def test_evn1_matching_msh9_2_is_read_and_gives_no_warning(event: str) -> None:
    message = parse(adt_message(event, f"EVN|{event}|20261120101000+0800"))
    translation = adt.translate(message, CTX)
    assert translation.warnings == []
    assert not any(w.startswith("EVN-1") for w in message.unmapped())
    assert translation.occurred == "2026-11-20T10:10:00+08:00"


def test_evn1_different_from_msh9_2_is_a_warning() -> None:
    message = parse(adt_message("A01", "EVN|A04|20261120101000+0800"))
    translation = adt.translate(message, CTX)
    assert translation.warnings == ["EVN-1: 'A04' is not MSH-9.2 'A01'"]
    assert not any(w.startswith("EVN-1") for w in message.unmapped())


def test_evn_without_evn1_v25() -> None:
    message = parse(adt_message("A01", "EVN||20261120101000+0800", version="2.5"))
    translation = adt.translate(message, CTX)
    assert translation.warnings == []
    assert translation.occurred == "2026-11-20T10:10:00+08:00"


def test_evn6_is_preferred_and_a_bad_evn6_is_named() -> None:
    good = parse(adt_message("A01", "EVN|A01|20261120101000|||| 20261120094500+0800"))
    assert adt.translate(good, CTX).occurred == "2026-11-20T09:45:00+08:00"
    bad = parse(adt_message("A01", "EVN|A01|20261120101000||||2026112099"))
    with pytest.raises(Hl7Error) as info:
        adt.translate(bad, CTX)
    assert str(info.value.where) == "EVN-6"
