"""Store-and-forward: the outbox of deliveries to other consortium members.

``enqueue`` runs inside the caller's unit of work, so a request that exists is one that will be
delivered. Workers then ``claim`` one row at a time in short transactions of their own:

- rows of one subject (a request) to one destination go out in the order they were written
  (the request before its cancellation); a row in flight or waiting for its retry holds back
  only the later rows of its own subject there, never another request's;
- a claimed row carries a lease under a token of its own (``Entry.leased_by``): the worker
  renews it while a long delivery runs (``renew``), and a worker that dies leaves it to expire,
  after which the row is claimed again under a new token. Outcomes are recorded only under the
  token that claimed the row. On PostgreSQL the claiming SELECT takes
  ``FOR UPDATE SKIP LOCKED``, so several gateway processes share the outbox without two of them
  taking the same row; SQLite's writers take turns anyway;
- a failed attempt is retried after an exponential backoff with jitter; a permanent failure or
  too many attempts makes the row ``dead``, with its reason, until an operator requeues it; a
  fault of this gateway's own configuration (an endpoint switched off, no credentials, our
  certificate expired) ``hold``s the row: it waits without using up its attempts;
- ``Doorbell`` wakes this process's idle workers when a transaction that enqueued rows commits;
  other processes find the rows when they next poll.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, event, exists, func, insert, or_, select, update

from records import ids
from records.db import reader
from records.schema import outbox

PENDING, DELIVERED, DEAD, CANCELLED = "pending", "delivered", "dead", "cancelled"
STATUSES = (PENDING, DELIVERED, DEAD, CANCELLED)


@dataclass(frozen=True)
class Backoff:
    """Retry after ``min(cap, base * 2**(attempts-1))`` seconds, scaled by a random factor in
    [0.5, 1] (jitter, so a destination coming back is not hit by every sender at once); after
    ``max_attempts`` the row is dead."""

    base: float = 2.0
    cap: float = 600.0
    max_attempts: int = 200

    def delay(self, attempts: int, rand: random.Random | None = None) -> timedelta:
        ceiling = min(self.cap, self.base * 2 ** max(0, attempts - 1))
        factor = 0.5 + 0.5 * (rand or random).random()
        return timedelta(seconds=ceiling * factor)


@dataclass(frozen=True)
class Entry:
    seq: int
    id: str
    destination: str
    channel: str
    topic: str
    subject: str | None
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt: datetime
    created: datetime
    updated: datetime
    last_error: str | None
    leased_by: str | None
    lease_until: datetime | None
    delivered: datetime | None

    @classmethod
    def of(cls, row: Any) -> Entry:
        return cls(
            seq=row.seq,
            id=row.id,
            destination=row.destination,
            channel=row.channel,
            topic=row.topic,
            subject=row.subject,
            payload=json.loads(row.payload),
            status=row.status,
            attempts=row.attempts,
            next_attempt=_aware(row.next_attempt),
            created=_aware(row.created),
            updated=_aware(row.updated),
            last_error=row.last_error,
            leased_by=row.leased_by,
            lease_until=_aware(row.lease_until) if row.lease_until else None,
            delivered=_aware(row.delivered) if row.delivered else None,
        )


def _aware(value: datetime) -> datetime:
    """SQLite gives back naive datetimes; everything here is written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def enqueue(
    conn: Connection,
    *,
    destination: str,
    channel: str,
    topic: str,
    payload: dict[str, Any],
    subject: str | None = None,
    entry_id: str | None = None,
) -> str:
    """Add a delivery inside the caller's transaction; return its id (the idempotency key)."""
    now = _now()
    entry_id = entry_id or ids.new_id()
    conn.execute(
        insert(outbox).values(
            id=entry_id,
            destination=destination,
            channel=channel,
            topic=topic,
            subject=subject,
            payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
            status=PENDING,
            attempts=0,
            next_attempt=now,
            created=now,
            updated=now,
        )
    )
    conn.info[_RANG] = True  # the doorbell rings when this transaction commits
    return entry_id


_RANG = "yilian.outbox.enqueued"  # in Connection.info, which is its pooled connection's info
_bells: dict[Engine, list[threading.Event]] = {}
_bells_lock = threading.Lock()


class Doorbell:
    """Rings when a connection of ``engine`` that enqueued rows comes back to the pool with them
    committed, so idle workers of this process start at once instead of at their next poll.
    (The pool's check-in comes after the commit; SQLAlchemy's ``commit`` event comes before it,
    when a worker woken would not see the rows yet.)"""

    def __init__(self, engine: Engine) -> None:
        self.event = threading.Event()
        with _bells_lock:
            if engine not in _bells:
                bells: list[threading.Event] = []
                _bells[engine] = bells

                def checked_in(_dbapi: Any, record: Any) -> None:
                    if record is not None and record.info.pop(_RANG, False):
                        for bell in bells:
                            bell.set()

                event.listen(engine.pool, "checkin", checked_in)
                event.listen(engine, "rollback", _rolled_back)
            _bells[engine].append(self.event)

    def wait(self, timeout: float) -> bool:
        """Wait until rung or ``timeout``; True when rung."""
        rung = self.event.wait(timeout)
        self.event.clear()
        return rung


def _rolled_back(conn: Connection) -> None:
    conn.info.pop(_RANG, None)


def _claimable(now: datetime, channels: Sequence[str] | None):  # type: ignore[no-untyped-def]
    earlier = outbox.alias("earlier")
    same_subject = or_(
        earlier.c.subject == outbox.c.subject,
        and_(earlier.c.subject.is_(None), outbox.c.subject.is_(None)),
    )
    head = ~exists().where(
        earlier.c.destination == outbox.c.destination,
        earlier.c.status == PENDING,
        earlier.c.seq < outbox.c.seq,
        same_subject,
    )
    query = (
        select(outbox)
        .where(
            outbox.c.status == PENDING,
            head,
            outbox.c.next_attempt <= now,
            or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now),
        )
        .order_by(outbox.c.next_attempt, outbox.c.seq)
        .limit(1)
        .with_for_update(skip_locked=True, of=outbox)
    )
    if channels:
        query = query.where(outbox.c.channel.in_(list(channels)))
    return query


def claim(
    engine: Engine,
    worker: str,
    lease: timedelta,
    *,
    channels: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Entry | None:
    """Take the next row due, if any, for ``lease``, under a token of its own
    (``Entry.leased_by``); the attempt is counted now, so a worker that dies mid-delivery still
    moves the row towards its backoff."""
    now = now or _now()
    # look first without the write lock: an idle worker polls, and on SQLite a writing
    # transaction would make ingest wait behind every poll
    with reader(engine).connect() as conn:
        if conn.execute(_claimable(now, channels)).first() is None:
            return None
    with engine.begin() as conn:
        row = conn.execute(_claimable(now, channels)).first()
        if row is None:
            return None
        token = f"{ids.new_id()[:16]}@{worker}"[:64]
        conn.execute(
            update(outbox)
            .where(outbox.c.seq == row.seq)
            .values(
                lease_until=now + lease,
                leased_by=token,
                attempts=outbox.c.attempts + 1,
                updated=now,
            )
        )
        claimed = conn.execute(select(outbox).where(outbox.c.seq == row.seq)).one()
    return Entry.of(claimed)


def _held(entry: Entry):  # type: ignore[no-untyped-def]
    """The row as long as it is still under the lease ``entry`` was claimed with."""
    return and_(
        outbox.c.seq == entry.seq,
        outbox.c.leased_by == entry.leased_by,
        outbox.c.status == PENDING,
    )


def renew(engine: Engine, entry: Entry, lease: timedelta) -> bool:
    """Extend the lease of a long delivery; False when the row is no longer under this claim
    (the lease ran out and someone else took it, or the request was cancelled)."""
    now = _now()
    with engine.begin() as conn:
        result = conn.execute(
            update(outbox).where(_held(entry)).values(lease_until=now + lease, updated=now)
        )
    return result.rowcount == 1


def delivered(conn: Connection, entry: Entry) -> bool:
    """In the caller's transaction (with what the delivery changes in the record): the row is
    delivered. False when it is no longer under this claim."""
    now = _now()
    result = conn.execute(
        update(outbox)
        .where(_held(entry))
        .values(
            status=DELIVERED,
            delivered=now,
            lease_until=None,
            leased_by=None,
            last_error=None,
            updated=now,
        )
    )
    return result.rowcount == 1


def failed(
    conn: Connection,
    entry: Entry,
    error: str,
    *,
    permanent: bool = False,
    backoff: Backoff,
    hold: timedelta | None = None,
) -> str | None:
    """In the caller's transaction: record a failed attempt. The row waits for its retry, is
    held for ``hold`` without the attempt counting (a fault of our own configuration, which an
    operator mends), or is dead. Returns its status, or None when it is no longer under this
    claim."""
    now = _now()
    dead = hold is None and (permanent or entry.attempts >= backoff.max_attempts)
    values: dict[str, Any] = {
        "lease_until": None,
        "leased_by": None,
        "last_error": error[:2000],
        "updated": now,
    }
    if hold is not None:
        values["next_attempt"] = now + hold
        values["attempts"] = outbox.c.attempts - 1
        values["last_error"] = f"held: {error}"[:2000]
    elif dead:
        values["status"] = DEAD
        if not permanent:
            values["last_error"] = f"gave up after {entry.attempts} attempts: {error}"[:2000]
    else:
        values["next_attempt"] = now + backoff.delay(entry.attempts)
    result = conn.execute(update(outbox).where(_held(entry)).values(**values))
    if result.rowcount != 1:
        return None
    return DEAD if dead else PENDING


def cancel_subject(conn: Connection, subject: str, *, reason: str) -> int:
    """In the caller's transaction: drop the waiting deliveries of a cancelled request. A row
    in flight (under a live lease) is left to finish, so what follows it (the cancel message)
    still goes out after it."""
    now = _now()
    result = conn.execute(
        update(outbox)
        .where(
            outbox.c.subject == subject,
            outbox.c.status == PENDING,
            or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now),
        )
        .values(status=CANCELLED, last_error=reason, updated=now, leased_by=None)
    )
    return int(result.rowcount)


def sent_or_sending(conn: Connection, subject: str, destination: str, topic: str) -> bool:
    """Whether a row of this subject and topic went, or is still going, to the destination."""
    found = conn.execute(
        select(outbox.c.seq)
        .where(
            outbox.c.subject == subject,
            outbox.c.destination == destination,
            outbox.c.topic == topic,
            outbox.c.status.in_([PENDING, DELIVERED]),
        )
        .limit(1)
    ).first()
    return found is not None


def requeue(engine: Engine, entry_id: str) -> Entry | None:
    """An operator sends a dead (or cancelled) row again, from its first attempt."""
    now = _now()
    with engine.begin() as conn:
        result = conn.execute(
            update(outbox)
            .where(outbox.c.id == entry_id, outbox.c.status.in_([DEAD, CANCELLED]))
            .values(status=PENDING, attempts=0, next_attempt=now, updated=now)
        )
        if result.rowcount != 1:
            return None
    return get(engine, entry_id)


def get(engine: Engine, entry_id: str) -> Entry | None:
    with reader(engine).connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.id == entry_id)).first()
    return Entry.of(row) if row else None


def listing(
    engine: Engine,
    *,
    status: str | None = None,
    subject: str | None = None,
    limit: int = 100,
) -> list[Entry]:
    query = select(outbox).order_by(outbox.c.seq.desc()).limit(limit)
    if status:
        query = query.where(outbox.c.status == status)
    if subject:
        query = query.where(outbox.c.subject == subject)
    with reader(engine).connect() as conn:
        return [Entry.of(row) for row in conn.execute(query)]


@dataclass(frozen=True)
class Depth:
    by_status: dict[str, int]
    oldest_pending: datetime | None

    def oldest_age(self, now: datetime | None = None) -> float:
        if self.oldest_pending is None:
            return 0.0
        return max(0.0, ((now or _now()) - self.oldest_pending).total_seconds())


def depth(engine: Engine) -> Depth:
    with reader(engine).connect() as conn:
        counts = {
            row.status: row.n
            for row in conn.execute(
                select(outbox.c.status, func.count().label("n")).group_by(outbox.c.status)
            )
        }
        oldest = conn.execute(
            select(func.min(outbox.c.created)).where(outbox.c.status == PENDING)
        ).scalar()
    return Depth(
        {status: counts.get(status, 0) for status in STATUSES},
        _aware(oldest) if oldest else None,
    )
