"""The audit hash chain: the rule in security.audit and its storage in records.audit_log."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from records import audit_log
from records.audit_log import Event
from records.schema import app_user, audit_head, audit_record
from security.audit import GENESIS, AuditEntry, ChainBreak, chain_hash, verify_chain
from security.principal import Principal, Role

T0 = datetime(2024, 3, 1, 8, 30, 0, 123456, tzinfo=UTC)


def _entry(seq: int, **changes: object) -> AuditEntry:
    base = AuditEntry(
        seq=seq,
        recorded=T0 + timedelta(seconds=seq),
        actor="doctor.xingfu",
        role="township_doctor",
        organization="XINGFU_THC",
        action="read",
        resources=(f"Patient/{seq}",),
        patient=str(seq),
        outcome="success",
        detail=None,
        source="10.0.0.7",
    )
    return dataclasses.replace(base, **changes)


def _chain(n: int) -> list[tuple[AuditEntry, str, str]]:
    rows = []
    prev = GENESIS
    for seq in range(1, n + 1):
        entry = _entry(seq)
        digest = chain_hash(prev, entry)
        rows.append((entry, prev, digest))
        prev = digest
    return rows


def _head(rows: list[tuple[AuditEntry, str, str]]) -> tuple[int, str]:
    return rows[-1][0].seq, rows[-1][2]


# -- the rule ----------------------------------------------------------------------------------


def test_intact_chain_is_accepted() -> None:
    rows = _chain(5)
    assert verify_chain(rows, _head(rows)) is None
    assert verify_chain(rows, None) is None


def test_empty_chain_with_genesis_head_is_accepted() -> None:
    assert verify_chain([], (0, GENESIS)) is None


def test_chain_hash_depends_on_previous_hash_and_content() -> None:
    entry = _entry(1)
    assert chain_hash(GENESIS, entry) == chain_hash(GENESIS, _entry(1))
    assert chain_hash(GENESIS, entry) != chain_hash("f" * 64, entry)
    assert chain_hash(GENESIS, entry) != chain_hash(GENESIS, _entry(1, detail="x"))
    assert chain_hash(GENESIS, entry) != chain_hash(
        GENESIS, _entry(1, recorded=entry.recorded + timedelta(microseconds=1))
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("actor", "someone.else"),
        ("role", "admin"),
        ("organization", None),
        ("action", "delete"),
        ("resources", ("Patient/999",)),
        ("patient", "999"),
        ("outcome", "refused"),
        ("detail", "hidden"),
        ("source", "192.168.1.1"),
        ("recorded", T0 + timedelta(days=1)),
    ],
)
def test_altered_record_is_named(field: str, value: object) -> None:
    rows = _chain(5)
    entry, prev, digest = rows[2]
    rows[2] = (dataclasses.replace(entry, **{field: value}), prev, digest)
    broken = verify_chain(rows, _head(rows))
    assert broken is not None
    assert broken.seq == 3
    assert "altered" in broken.reason


def test_altered_record_with_recomputed_hash_breaks_the_next_link() -> None:
    rows = _chain(5)
    entry, prev, _ = rows[2]
    forged = dataclasses.replace(entry, actor="someone.else")
    rows[2] = (forged, prev, chain_hash(prev, forged))
    broken = verify_chain(rows, _head(_chain(5)))
    assert broken == ChainBreak(4, "previous-hash link does not match the record before it")


def test_removed_record_is_detected() -> None:
    rows = _chain(5)
    del rows[2]  # seq 3
    broken = verify_chain(rows, _head(rows))
    assert broken is not None
    assert broken.seq == 4
    assert "expected record 3" in broken.reason


def test_two_swapped_records_are_detected() -> None:
    rows = _chain(5)
    rows[1], rows[2] = rows[2], rows[1]
    broken = verify_chain(rows, _head(rows))
    assert broken is not None
    assert broken.seq == 3
    assert "expected record 2" in broken.reason


def test_swapped_contents_keeping_seq_numbers_are_detected() -> None:
    rows = _chain(5)
    (e2, p2, h2), (e3, p3, h3) = rows[1], rows[2]
    rows[1] = (dataclasses.replace(e3, seq=2), p2, h2)
    rows[2] = (dataclasses.replace(e2, seq=3), p3, h3)
    broken = verify_chain(rows, _head(rows))
    assert broken is not None
    assert broken.seq == 2


def test_truncated_tail_is_detected_by_the_head() -> None:
    full = _chain(5)
    truncated = full[:3]
    # Without the head a truncated chain looks intact; the head is what catches it.
    assert verify_chain(truncated, None) is None
    broken = verify_chain(truncated, _head(full))
    assert broken is not None
    assert broken.seq == 4
    assert "head says 5" in broken.reason


def test_head_with_wrong_hash_is_detected() -> None:
    rows = _chain(3)
    broken = verify_chain(rows, (3, "a" * 64))
    assert broken is not None
    assert broken.seq == 4


def test_chain_not_starting_at_genesis_is_detected() -> None:
    rows = _chain(3)
    entry, _, _ = rows[0]
    rows[0] = (entry, "1" * 64, chain_hash("1" * 64, entry))
    broken = verify_chain(rows, None)
    assert broken is not None
    assert broken.seq == 1


# -- the stored chain --------------------------------------------------------------------------

DOCTOR = Principal(
    "doctor.xingfu", Role.TOWNSHIP_DOCTOR, "XINGFU_THC", practitioner_id="P1", source="10.0.0.7"
)
ADMIN = Principal("admin", Role.ADMIN, "COUNTY_HOSPITAL")


def _append_events(ctx) -> int:  # type: ignore[no-untyped-def]
    with ctx.engine.begin() as conn:
        audit_log.append(conn, DOCTOR, Event("read", ("Patient/1",), ("1",)))
        audit_log.append(
            conn, DOCTOR, Event("search", ("Observation/5", "Observation/6"), ("1", "2"))
        )
        audit_log.append(conn, ADMIN, Event("login", detail="登录成功"))
    with ctx.engine.begin() as conn:
        return audit_log.append(
            conn, DOCTOR, Event("update", ("Patient/2",), ("2",), "refused", "not allowed")
        )


def _verify(ctx) -> tuple[int, ChainBreak | None]:  # type: ignore[no-untyped-def]
    with ctx.engine.connect() as conn:
        return audit_log.verify(conn)


def test_stored_chain_verifies(ctx) -> None:  # type: ignore[no-untyped-def]
    last = _append_events(ctx)
    assert last == 5  # one record per patient touched, one for a login with none
    assert _verify(ctx) == (5, None)
    with ctx.engine.connect() as conn:
        head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
        tail = conn.execute(select(audit_record.c.hash).where(audit_record.c.seq == 5)).scalar()
        patients = (
            conn.execute(select(audit_record.c.patient).order_by(audit_record.c.seq))
            .scalars()
            .all()
        )
    assert head.seq == 5 and head.hash == tail
    assert patients == ["1", "1", "2", None, "2"]


def test_empty_stored_chain_verifies(ctx) -> None:  # type: ignore[no-untyped-def]
    assert _verify(ctx) == (0, None)


@pytest.mark.parametrize(
    "column,value", [("detail", "nothing to see"), ("actor", "someone.else"), ("detail", None)]
)
def test_sql_update_of_a_row_names_its_seq(ctx, column: str, value: object) -> None:  # type: ignore[no-untyped-def]
    _append_events(ctx)
    with ctx.engine.begin() as conn:
        changed = conn.execute(
            text(f"UPDATE audit_record SET {column} = :value WHERE seq = :seq"),
            {"value": value, "seq": 4},
        ).rowcount
    assert changed == 1
    count, broken = _verify(ctx)
    assert broken is not None
    assert broken.seq == 4
    assert "altered" in broken.reason


def test_sql_delete_of_a_middle_row_is_detected(ctx) -> None:  # type: ignore[no-untyped-def]
    _append_events(ctx)
    with ctx.engine.begin() as conn:
        assert conn.execute(text("DELETE FROM audit_record WHERE seq = 3")).rowcount == 1
    _, broken = _verify(ctx)
    assert broken is not None
    assert broken.seq == 4
    assert "expected record 3" in broken.reason


def test_sql_delete_of_the_last_row_is_detected(ctx) -> None:  # type: ignore[no-untyped-def]
    _append_events(ctx)
    with ctx.engine.begin() as conn:
        assert conn.execute(text("DELETE FROM audit_record WHERE seq = 5")).rowcount == 1
    count, broken = _verify(ctx)
    assert count == 4
    assert broken is not None
    assert broken.seq == 5


def _add_user(conn, username: str) -> None:  # type: ignore[no-untyped-def]
    conn.execute(
        app_user.insert().values(
            username=username,
            kind="person",
            role="admin",
            organization="COUNTY_HOSPITAL",
            password_hash="x",
            active=True,
            created=datetime.now(UTC),
        )
    )


def _count(conn, table) -> int:  # type: ignore[no-untyped-def]
    return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_rolled_back_work_leaves_no_audit_record(ctx) -> None:  # type: ignore[no-untyped-def]
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with ctx.engine.begin() as conn:
            _add_user(conn, "ghost")
            assert audit_log.append(conn, ADMIN, Event("create", ("User/ghost",))) == 1
            assert _count(conn, audit_record) == 1  # written, but not yet committed
            raise Boom

    with ctx.engine.connect() as conn:
        assert _count(conn, audit_record) == 0
        assert _count(conn, app_user) == 0
        head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
    assert (head.seq, head.hash) == (0, GENESIS)

    # Committed work commits its record, and the chain carries on from the committed head.
    with ctx.engine.begin() as conn:
        _add_user(conn, "real")
        assert audit_log.append(conn, ADMIN, Event("create", ("User/real",))) == 1
    with ctx.engine.connect() as conn:
        assert _count(conn, app_user) == 1
    assert _verify(ctx) == (1, None)
