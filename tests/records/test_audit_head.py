"""The audit chain's head as a connection remembers it (``records.audit_log.append_many``): a
connection that moved the head last appends without reading it, and one whose memory is stale
(another writer moved the head, or the transaction that moved it rolled back) reads it again;
the chain stays whole either way."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, select

from gateway.context import Context
from records import audit_log, bulk, schema
from records.audit_log import Event
from security.principal import Principal, Role

WHO = Principal(username="audit-test", role=Role.SYSTEM, organization=None)


def head_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of the head, from now on."""
    seen: list[str] = []
    fetch_all = bulk.fetch_all

    def spy(conn: Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
        if sql.startswith("SELECT seq, hash FROM audit_head"):
            seen.append(sql)
        return fetch_all(conn, sql, params)

    monkeypatch.setattr(bulk, "fetch_all", spy)
    return seen


def append(conn: Connection, action: str) -> int:
    return audit_log.append_many(conn, [(WHO, Event(action))])


def chain_is_whole(ctx: Context) -> tuple[int, int]:
    with ctx.engine.connect() as conn:
        count, broken = audit_log.verify(conn)
        seq = schema.audit_record.c.seq
        seqs = list(conn.execute(select(seq).order_by(seq)).scalars())
    assert broken is None, broken
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
    return count, seqs[-1]


def test_a_connection_that_moved_the_head_appends_without_reading_it(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ctx.engine.connect() as conn:
        with conn.begin():
            first = append(conn, "first")
        reads = head_reads(monkeypatch)
        with conn.begin():
            second = append(conn, "second")
        with conn.begin():
            third = append(conn, "third")
    assert (second, third) == (first + 1, first + 2)
    assert reads == []
    assert chain_is_whole(ctx)[1] == third


def test_another_writer_or_a_rollback_makes_the_connection_read_the_head_again(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ctx.engine.connect() as mine, ctx.engine.connect() as other:
        with mine.begin():
            append(mine, "mine")
        with other.begin():
            moved = append(other, "other")  # the head moves under what ``mine`` remembers
        reads = head_reads(monkeypatch)
        with mine.begin():
            after_other = append(mine, "mine again")
        assert after_other == moved + 1 and len(reads) == 1

        transaction = mine.begin()
        append(mine, "rolled back")  # remembered, then undone
        transaction.rollback()
        with mine.begin():
            after_rollback = append(mine, "after the rollback")
        assert after_rollback == after_other + 1 and len(reads) == 2
    assert chain_is_whole(ctx)[1] == after_rollback
