"""Fixtures for the HL7 v2 tests: messages, and a running gateway with its MLLP listener."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo import resident_id

SAMPLES = Path(__file__).parents[3] / "samples" / "hl7"
PUBLIC = Path(__file__).parents[2] / "data" / "hl7" / "public"
WANG_ID = resident_id("411325", "1952-03-14", "042")  # demo patient 王秀英


def segments(*lines: str, codec: str = "utf-8") -> bytes:
    return "\r".join(lines).encode(codec) + b"\r"


def oru(
    control_id: str = "MSG-1",
    *,
    facility: str = "XINGFU_THC",
    version: str = "2.5.1",
    charset: str = "UNICODE UTF-8",
    accept_ack: str = "",
    application_ack: str = "",
    pid: str | None = None,
    obx: list[str] | None = None,
    codec: str = "utf-8",
) -> bytes:
    msh = (
        f"MSH|^~\\&|LIS|{facility}|YILIAN|COUNTY_HOSP|20261120101500+0800||ORU^R01^ORU_R01|"
        f"{control_id}|P|{version}|||{accept_ack}|{application_ack}||{charset}"
    )
    return segments(
        msh,
        pid or f"PID|1||XF0042^^^XINGFU_THC^MR~{WANG_ID}^^^^NNCHN||王^秀英||19520314|F",
        "OBR|1|ORD-1|FIL-1|24331-1^血脂四项^LN|||20261120080000+0800|||||||||||||||"
        "20261120101500+0800||LAB|F",
        *(obx or ["OBX|1|NM|2093-3^总胆固醇^LN||5.8|mmol/L|<5.2|H|||F"]),
        codec=codec,
    )


@pytest.fixture
def gateway(client) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """The running app's MLLP port (the demo consortium loaded)."""
    from gateway import demo as demo_data

    demo_data.load(client.app.state.ctx)
    yield client.app.state.mllp.port
