"""Sample messages published by others (tests/data/hl7/public, see its README) through the
real ingest: each ends accepted, with warnings naming what was not mapped, or refused with a
reason that names segment and field."""

from __future__ import annotations

import pytest

from adapters.hl7v2.ingest import Origin
from records import inbound
from security.principal import SYSTEM
from tests.adapters.hl7v2.conftest import PUBLIC
from tests.fhir_schema import assert_r4


def _as_member(raw: bytes) -> bytes:
    """Send it as the registered demo clinic: MSH-4 becomes XINGFU_THC."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    lines = [line for line in text.split(b"\r") if line.strip()]
    fields = lines[0].split(b"|")
    fields[3] = b"XINGFU_THC"
    lines[0] = b"|".join(fields)
    return b"\r".join(lines) + b"\r"


STORED = ("accepted", "accepted-with-warnings")
# file -> (ACK code sent, outcome, what it must show: a resource type, or the field refused)
EXPECTED = {
    "simple-hl7_adt.hl7": ("AA", STORED, "Encounter"),
    "simple-hl7_oru.hl7": ("AA", STORED, "DiagnosticReport"),
    # MSH-15 AL asks for enhanced mode; an NM result '01I' is not a number
    "simple-hl7_oru-imm.hl7": ("CE", ("rejected",), "OBX-5"),
    "simple-hl7_orm.hl7": ("AA", STORED, "ServiceRequest"),
    "hl7-standard_message.hl7": ("AA", STORED, "Encounter"),
    # RSP^K11, a query response, is not ingested; MSH-15/16 NE/NE: no ACK is wanted
    "hl7-standard_message3.hl7": (None, ("rejected",), "MSH-9"),
    "python-hl7_sample.hl7": ("AE", ("rejected",), "PID-7"),  # birth date 196203520
    # NE/NE again; sex '1' is not in table 0001: accepted with that named as a warning
    "python-hl7_adt-a04.hl7": (None, STORED, "Encounter"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_public_sample(demo, name: str) -> None:
    raw = _as_member((PUBLIC / name).read_bytes())
    reply = demo.hl7.receive(raw, Origin("mllp", "127.0.0.1"))
    code, outcomes, shows = EXPECTED[name]
    assert reply.code == code, (reply.error, reply.warnings)
    assert (reply.ack is None) == (code is None)
    with demo.engine.connect() as conn:
        row = inbound.get(conn, reply.archive_id)
    assert row is not None and row.raw == raw and row.outcome in outcomes
    if row.outcome in STORED:
        kinds = {ref.split("/")[0] for ref in row.resources}
        assert {"Patient", "Provenance", shows} <= kinds
        for ref in row.resources:
            rtype, rid = ref.split("/")
            assert_r4(demo.records.read(SYSTEM, rtype, rid).json())
        # whatever was not mapped is named, field by field
        assert all(
            " (segment " in w or w.startswith(("MSH-18", "OBX", "MRG", "PID-8"))
            for w in row.warnings
        )
    else:
        assert shows in row.error
    if name == "python-hl7_adt-a04.hl7":
        assert any(w.startswith("PID-8") and "gender left out" in w for w in row.warnings)
