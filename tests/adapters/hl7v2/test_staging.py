"""Messages staged outside the writing transaction (records.staging): written together, and
decided again inside the transaction whenever what they read has changed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from adapters.hl7v2.ingest import Origin
from gateway.demo import resident_id
from records import staging
from security.principal import SYSTEM
from tests.adapters.hl7v2.conftest import oru

MLLP = Origin("mllp", "127.0.0.1")


def _new_patient(n: int) -> str:
    number = resident_id("411325", f"1960-01-{n:02d}", f"{2 * n + 1:03d}")  # odd: male
    return f"PID|1||ZH{n:04d}^^^XINGFU_THC^MR~{number}^^^^NNCHN||张^{n}||196001{n:02d}|M"


def _patients(ctx, pid_number: str) -> list:  # type: ignore[no-untyped-def]
    return ctx.records.search(SYSTEM, "Patient", [("identifier", pid_number)]).matches


@pytest.fixture(params=["thread", "loop"])
def receive(request, demo):  # type: ignore[no-untyped-def]
    """Both ways in: a thread waiting for the writer (reprocess, the command line), and an
    event loop awaiting it (the MLLP and HTTP listeners)."""
    if request.param == "thread":
        return lambda raw: demo.hl7.receive(raw, MLLP)
    return lambda raw: asyncio.run(demo.hl7.receive_async(raw, MLLP, demo.executor))


def test_a_stale_snapshot_is_decided_again_inside_the_transaction(demo):
    # prepared while the patient is unknown: the staged rows would create the Patient
    first = demo.hl7.prepare(oru("ST-1", pid=_new_patient(1)), MLLP)
    assert first.staged is not None
    assert any(e is None for k, e in first.staged.expect.items() if k[0] == "Patient")
    # meanwhile another message of the same patient is committed
    assert demo.hl7.receive(oru("ST-2", pid=_new_patient(1)), MLLP).code == "AA"
    reply = demo.hl7.finish(first)
    assert reply.code == "AA"
    patients = _patients(demo, "ZH0001")
    assert len(patients) == 1  # the stale unit matched the patient instead of making a second
    reports = demo.records.search(SYSTEM, "DiagnosticReport", [("patient", patients[0].res_id)])
    assert reports.total == 1  # same order and filler numbers: the report was matched too


def test_the_same_message_prepared_twice_is_stored_once(demo):
    raw = oru("ST-3", pid=_new_patient(3))
    one, two = demo.hl7.prepare(raw, MLLP), demo.hl7.prepare(raw, MLLP)
    first, second = demo.hl7.finish(one), demo.hl7.finish(two)
    assert second.archive_id == first.archive_id and second.ack == first.ack
    assert len(_patients(demo, "ZH0003")) == 1
    assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 1


def test_staged_messages_waiting_together_are_written_with_one_statement_per_table(
    demo, monkeypatch
):
    calls: list[int] = []
    real = staging.write

    def counting(conn, units):  # type: ignore[no-untyped-def]
        calls.append(len(units))
        real(conn, units)

    monkeypatch.setattr(staging, "write", counting)
    messages = [  # other patients, other orders: nothing one reads is written by another
        oru(f"ST-G{n}", pid=_new_patient(10 + n)).replace(b"ORD-1|FIL-1", f"O{n}|F{n}".encode())
        for n in range(4)
    ]
    prepared = [demo.hl7.prepare(raw, MLLP) for raw in messages]
    gate, holding = threading.Event(), threading.Event()

    def block(conn):  # type: ignore[no-untyped-def]
        holding.set()
        gate.wait(30)

    committer = demo.hl7.committer
    blocked = committer.enqueue(block)
    assert holding.wait(30)  # the writer is busy: what comes now waits in its queue
    replies: dict[int, str | None] = {}
    senders = [
        threading.Thread(target=lambda n=n: replies.update({n: demo.hl7.finish(prepared[n]).code}))
        for n in range(4)
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 30
    while len(committer._jobs) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    blocked.result(30)
    for thread in senders:
        thread.join(30)
    assert replies == {n: "AA" for n in range(4)}
    assert calls == [4]
    assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 4


def test_when_writing_a_group_fails_each_message_is_written_alone(demo, monkeypatch):
    def broken(conn, units):  # type: ignore[no-untyped-def]
        raise RuntimeError("constraint violated")

    monkeypatch.setattr(staging, "write", broken)
    reply = demo.hl7.receive(oru("ST-F1", pid=_new_patient(20)), MLLP)
    assert reply.code == "AA", reply.error
    assert len(_patients(demo, "ZH0020")) == 1
    assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 1


def test_prepared_message_travels_without_its_raw_bytes_and_gets_them_back(demo):
    import pickle

    raw = oru("ST-P1", pid=_new_patient(21))
    prepared = demo.hl7.prepare(raw, MLLP)
    moved = pickle.loads(pickle.dumps(prepared))
    assert raw not in pickle.dumps(prepared)
    assert moved.translation is None and moved.raw == b""
    reply = demo.hl7.finish(moved.with_raw(raw))
    assert reply.code == "AA"
    from records import db, inbound

    with db.reader(demo.engine).connect() as conn:
        assert inbound.get(conn, reply.archive_id).raw == raw


def test_a_stale_message_is_prepared_again_from_a_new_snapshot(demo, monkeypatch, receive):
    prepares: list[bytes] = []
    real_prepare, real_holding = demo.hl7.prepare, staging.holding
    stale_once = iter([True])

    def counting(raw, origin, archive_id=None):  # type: ignore[no-untyped-def]
        prepares.append(raw)
        return real_prepare(raw, origin, archive_id)

    def holding(conn, units):  # type: ignore[no-untyped-def]
        return 0 if next(stale_once, False) else real_holding(conn, units)

    monkeypatch.setattr(demo.hl7, "prepare", counting)
    monkeypatch.setattr(staging, "holding", holding)
    reply = receive(oru("ST-R1", pid=_new_patient(22)))
    assert reply.code == "AA"
    assert len(prepares) == 2  # stale once: prepared again, then written as staged
    assert len(_patients(demo, "ZH0022")) == 1
    from records import db, inbound

    with db.reader(demo.engine).connect() as conn:
        total, _ = inbound.listing(conn)
    assert total == 1  # the stale attempt left nothing behind


def test_a_message_stale_at_every_attempt_is_decided_by_the_writer(demo, monkeypatch, receive):
    monkeypatch.setattr(staging, "holding", lambda conn, units: 0)  # never holds
    reply = receive(oru("ST-R2", pid=_new_patient(23)))
    assert reply.code == "AA"
    assert len(_patients(demo, "ZH0023")) == 1
    # decided by the writer alone, a repeat is answered as first, other content refused
    assert receive(oru("ST-R2", pid=_new_patient(23))).ack == reply.ack
    refused = receive(oru("ST-R2", pid=_new_patient(24)))
    assert refused.code == "AR" and "already used" in (refused.error or "")
    assert len(_patients(demo, "ZH0024")) == 0


def test_the_resident_number_check_reads_the_holders_of_the_identifier_look_up(demo):
    """Staging checks that a resident identity number stays on one Patient with what the
    snapshot's identifier look-up found (every holder of the number), not a query of its own:
    the verdict is the one the query gives, for a number held by another Patient, by the
    Patient itself, by two Patients, or by nobody."""
    from sqlalchemy import insert

    from records import db, store
    from records.errors import Conflict
    from records.identity import RESIDENT_ID_SYSTEM
    from records.schema import search_token
    from tests.adapters.hl7v2.conftest import WANG_ID

    wang = ("Patient", RESIDENT_ID_SYSTEM, WANG_ID)
    free = ("Patient", RESIDENT_ID_SYSTEM, resident_id("411325", "1960-01-30", "061"))
    reader = db.reader(demo.engine)

    def verdicts(number: str, rid: str) -> tuple[bool, bool]:
        body = {
            "resourceType": "Patient",
            "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": number}],
        }
        out = []
        with reader.connect() as conn:
            holders: dict[tuple[str, str, str], set[str]] = {}
            demo.records.find_by_identifiers(conn, [wang, free], holders)
            for known in (holders, None):
                try:
                    demo.records.stage_batch(
                        conn, SYSTEM, [("Patient", rid, body, False)], {}, known
                    )
                    out.append(False)
                except Conflict:
                    out.append(True)
        return out[0], out[1]

    with reader.connect() as conn:
        holders: dict[tuple[str, str, str], set[str]] = {}
        found = store.by_identifiers(conn, [wang, free], holders)
    assert holders == {wang: {"demo-wang-xiuying"}, free: set()}
    assert found[wang].res_id == "demo-wang-xiuying" and free not in found

    assert verdicts(WANG_ID, "someone-else") == (True, True)
    assert verdicts(WANG_ID, "demo-wang-xiuying") == (False, False)
    assert verdicts(free[2], "someone-else") == (False, False)
    # a second holder (only a broken database has one): still a conflict for the first one
    with demo.engine.begin() as conn:
        conn.execute(
            insert(search_token).values(
                res_type="Patient",
                res_id="demo-zhang-second",
                param="identifier",
                system=RESIDENT_ID_SYSTEM,
                code=WANG_ID,
            )
        )
    assert verdicts(WANG_ID, "demo-wang-xiuying") == (True, True)


def test_a_worker_keeps_its_snapshot_connection_between_messages(demo, monkeypatch):
    """``hold_reader`` (a worker process): one connection from the pool for every message's
    snapshot, the same rows staged; one that failed is dropped, and a kept one the server
    closed is replaced and the message staged again."""
    from sqlalchemy import event
    from sqlalchemy.exc import DBAPIError

    from adapters.hl7v2 import ingest as ingest_module
    from adapters.hl7v2.ingest import Hl7Ingest

    checkouts: list[object] = []
    event.listen(demo.engine, "checkout", lambda *args: checkouts.append(args[0]))
    worker = Hl7Ingest(demo.records, demo.hl7.settings, hold_reader=True)
    try:
        raws = [oru(f"HR-{n}", pid=_new_patient(20 + n % 2)) for n in range(4)]
        worker.prepare(raws[0], MLLP)  # the sender's Organization is looked up once
        taken = 0
        for raw in raws:
            before = len(checkouts)
            held = worker.prepare(raw, MLLP)
            taken += len(checkouts) - before
            plain = demo.hl7.prepare(raw, MLLP)
            assert held.staged is not None and plain.staged is not None
            assert held.staged.expect == plain.staged.expect
            assert [(s.res_type, s.version) for s in held.staged.rows.written] == [
                (s.res_type, s.version) for s in plain.staged.rows.written
            ]
            assert demo.hl7.finish(held).code == "AA"
        assert taken == 0 and len(worker._idle) == 1

        real, calls = ingest_module.plan, []

        def dropped_once(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) == 1:
                raise DBAPIError(
                    "SELECT", {}, Exception("server closed"), connection_invalidated=True
                )
            return real(*args, **kwargs)

        monkeypatch.setattr(ingest_module, "plan", dropped_once)
        before = len(checkouts)
        again = worker.prepare(oru("HR-9", pid=_new_patient(25)), MLLP)
        assert again.staged is not None and len(calls) == 2 and len(checkouts) == before + 1
        assert demo.hl7.finish(again).code == "AA"

        monkeypatch.setattr(ingest_module, "plan", lambda *a, **k: 1 / 0)
        try:
            worker.prepare(oru("HR-10", pid=_new_patient(26)), MLLP)
        except ZeroDivisionError:
            pass
        assert worker._idle == []  # not kept after a failure
    finally:
        worker.close()


def test_planning_resolves_references_and_leaves_the_translation_as_it_was(demo):
    """``plan`` gives every entry its id and points references at them; the translation keeps
    its "urn:uuid:" references for the one-at-a-time path, whatever planning shares with it."""
    import copy
    import json

    from adapters.hl7v2.ingest import _resolve, plan
    from records import db

    prepared = demo.hl7.prepare(oru("RS-1", pid=_new_patient(7)), MLLP)
    translation = prepared.translation
    assert translation is not None
    before = copy.deepcopy([e.body for e in translation.entries])
    with db.reader(demo.engine).connect() as conn:
        planned = plan(demo.records, conn, translation)
    assert [e.body for e in translation.entries] == before
    assert "urn:uuid:" in json.dumps(before)
    assert planned.writes and "urn:uuid:" not in json.dumps([w[2] for w in planned.writes])
    observation = next(w[2] for w in planned.writes if w[0] == "Observation")
    assert observation["subject"]["reference"] == planned.resolved[translation.patient_key or ""]

    tree = {"a": [{"reference": "urn:uuid:k"}, {"b": [1, {"c": "d"}]}], "e": {"f": "g"}}
    resolved = _resolve(tree, {"k": "Patient/1"})
    assert resolved == {"a": [{"reference": "Patient/1"}, {"b": [1, {"c": "d"}]}], "e": {"f": "g"}}
    assert tree["a"][0] == {"reference": "urn:uuid:k"}  # copied where it changed
    assert resolved["e"] is tree["e"] and resolved["a"][1] is tree["a"][1]  # shared elsewhere
    assert _resolve(tree, {}) is tree


def test_a_message_whose_sender_leaves_while_it_commits_is_committed_and_the_writer_goes_on(demo):
    """The listener's task is cancelled (the connection went, the gateway stops) while the
    message waits for the writer: it is committed all the same, and the writer lives on."""
    started, release = threading.Event(), threading.Event()

    def hold_the_writer(conn):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)

    async def scenario():  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        held = loop.run_in_executor(None, demo.hl7.committer.submit, hold_the_writer)
        await asyncio.to_thread(started.wait, 10)
        raw = oru("GONE-1", pid=_new_patient(25))
        task = asyncio.create_task(demo.hl7.receive_async(raw, MLLP, demo.executor))
        await asyncio.sleep(0.5)  # prepared, queued behind the held batch
        task.cancel()
        release.set()
        await held
        with pytest.raises(asyncio.CancelledError):
            await task
        after = oru("GONE-2", pid=_new_patient(26))  # a writer that died would never answer
        return await asyncio.wait_for(demo.hl7.receive_async(after, MLLP, demo.executor), 10)

    assert asyncio.run(scenario()).code == "AA"
    assert len(_patients(demo, "ZH0025")) == 1  # the message of the sender that left
    assert len(_patients(demo, "ZH0026")) == 1
