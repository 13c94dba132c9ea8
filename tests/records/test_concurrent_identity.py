"""One Patient per resident identity number even when writers race (on PostgreSQL each writer
takes its turn on the number, records.db.lock_keys; SQLite's writers take turns anyway)."""

from __future__ import annotations

import threading
import time

from adapters.hl7v2.ingest import Origin
from gateway.demo import resident_id
from records import store
from records.errors import Conflict
from security.principal import SYSTEM
from tests.adapters.hl7v2.conftest import oru

NUMBER = resident_id("411325", "1971-05-06", "031")  # odd sequence: male
IDENTIFIER = {
    "type": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NNCHN"}]
    },
    "system": "urn:oid:2.16.156.10011.1.3",
    "value": NUMBER,
}
PATIENT = {
    "resourceType": "Patient",
    "identifier": [IDENTIFIER],
    "name": [{"family": "赵", "given": ["建国"]}],
    "gender": "male",
    "birthDate": "1971-05-06",
}


def _holders(ctx) -> int:  # type: ignore[no-untyped-def]
    return ctx.records.search(SYSTEM, "Patient", [("identifier", NUMBER)]).total


def test_two_clients_registering_one_resident_at_once_make_one_patient(demo, monkeypatch):
    real = store.write_many

    def slow(conn, items):  # type: ignore[no-untyped-def]
        time.sleep(0.3)  # widen the gap between "is the number free?" and the insert
        return real(conn, items)

    monkeypatch.setattr(store, "write_many", slow)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def register() -> None:
        start.wait()
        try:
            outcomes.append(demo.records.create(SYSTEM, "Patient", PATIENT)[0])
        except Conflict as refused:
            outcomes.append(refused)

    threads = [threading.Thread(target=register) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "Stored"]
    assert _holders(demo) == 1


def test_a_message_staged_before_a_client_registered_the_resident_matches_them(demo):
    pid = f"PID|1||ZX0031^^^XINGFU_THC^MR~{NUMBER}^^^^NNCHN||赵^建国||19710506|M"
    origin = Origin("mllp", "127.0.0.1")
    prepared = demo.hl7.prepare(oru("RACE-1", pid=pid), origin)  # snapshot: nobody has it
    assert prepared.staged is not None
    replies = []
    with demo.engine.begin() as conn:  # a client's transaction, still open
        demo.records.create_in(conn, SYSTEM, "Patient", PATIENT)
        writer = threading.Thread(target=lambda: replies.append(demo.hl7.finish(prepared)))
        writer.start()
        time.sleep(0.5)  # the ingest writer must wait for this transaction, not pass it by
    writer.join(30)
    assert replies and replies[0].code == "AA"
    assert _holders(demo) == 1  # the message was decided again and matched the new patient
