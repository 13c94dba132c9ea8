"""The outbox: order per request and destination, leases under their own tokens, backoff,
holds, dead letters, requeue, cancel, the doorbell, and several workers sharing it without
taking the same row twice."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

from records import outbox
from records.db import make_engine
from records.outbox import Backoff

LEASE = timedelta(seconds=30)
NO_BACKOFF = Backoff(base=0.0, cap=0.0, max_attempts=3)


def _put(ctx, destination: str, topic: str = "request", subject: str | None = "task-1") -> str:  # type: ignore[no-untyped-def]
    with ctx.engine.begin() as conn:
        return outbox.enqueue(
            conn,
            destination=destination,
            channel="fhir",
            topic=topic,
            payload={"topic": topic, "text": "王秀英"},
            subject=subject,
        )


def _delivered(ctx, entry) -> bool:  # type: ignore[no-untyped-def]
    with ctx.engine.begin() as conn:
        return outbox.delivered(conn, entry)


def _failed(ctx, entry, error: str, **how) -> str | None:  # type: ignore[no-untyped-def]
    with ctx.engine.begin() as conn:
        return outbox.failed(conn, entry, error, **how)


def test_a_request_s_rows_go_to_a_destination_in_order_and_one_at_a_time(ctx):
    first, second = _put(ctx, "city"), _put(ctx, "city", topic="cancel")
    other = _put(ctx, "central")
    taken = outbox.claim(ctx.engine, "w1", LEASE)
    assert taken is not None and taken.id == first
    assert taken.payload == {"topic": "request", "text": "王秀英"}
    assert taken.attempts == 1
    # the request's first row is in flight: its second waits; central's row is free
    nxt = outbox.claim(ctx.engine, "w2", LEASE)
    assert nxt is not None and nxt.id == other
    assert outbox.claim(ctx.engine, "w3", LEASE) is None
    assert _delivered(ctx, taken)
    after = outbox.claim(ctx.engine, "w3", LEASE)
    assert after is not None and after.id == second


def test_another_request_to_the_same_destination_does_not_wait_behind_a_retry(ctx):
    first = _put(ctx, "city", subject="task-1")
    _put(ctx, "city", subject="task-1", topic="images")
    other = _put(ctx, "city", subject="task-2")
    taken = outbox.claim(ctx.engine, "w1", LEASE)
    assert taken is not None and taken.id == first
    assert _failed(ctx, taken, "connection reset", backoff=Backoff(base=60)) == outbox.PENDING
    nxt = outbox.claim(ctx.engine, "w1", LEASE)
    assert nxt is not None and nxt.id == other  # task-1's images wait behind its request
    assert outbox.claim(ctx.engine, "w1", LEASE) is None


def test_a_failed_row_waits_for_its_backoff_and_holds_back_the_rows_behind_it(ctx):
    first = _put(ctx, "city")
    _put(ctx, "city")
    taken = outbox.claim(ctx.engine, "w1", LEASE)
    assert taken is not None
    status = _failed(ctx, taken, "connection refused", backoff=Backoff(base=60))
    assert status == outbox.PENDING
    assert outbox.claim(ctx.engine, "w1", LEASE) is None  # head waits 30-60 s; second behind it
    row = outbox.get(ctx.engine, first)
    assert row is not None and row.last_error == "connection refused"
    assert timedelta(seconds=29) < row.next_attempt - row.updated <= timedelta(seconds=60)


def test_a_permanent_failure_is_dead_with_its_reason_and_frees_the_destination(ctx):
    first = _put(ctx, "city")
    second = _put(ctx, "city")
    taken = outbox.claim(ctx.engine, "w1", LEASE)
    assert taken is not None
    status = _failed(ctx, taken, "TLS: certificate expired", permanent=True, backoff=NO_BACKOFF)
    assert status == outbox.DEAD
    dead = outbox.get(ctx.engine, first)
    assert dead is not None and dead.status == outbox.DEAD
    assert dead.last_error == "TLS: certificate expired"
    nxt = outbox.claim(ctx.engine, "w1", LEASE)
    assert nxt is not None and nxt.id == second
    assert [e.id for e in outbox.listing(ctx.engine, status=outbox.DEAD)] == [first]


def test_too_many_attempts_make_a_row_dead_and_requeue_starts_it_again(ctx):
    first = _put(ctx, "city")
    for _ in range(NO_BACKOFF.max_attempts):
        taken = outbox.claim(ctx.engine, "w1", LEASE)
        assert taken is not None
        status = _failed(ctx, taken, "timed out", backoff=NO_BACKOFF)
    assert status == outbox.DEAD
    dead = outbox.get(ctx.engine, first)
    assert dead is not None and dead.last_error is not None
    assert dead.last_error.startswith("gave up after 3 attempts")
    assert outbox.requeue(ctx.engine, "no-such-row") is None
    again = outbox.requeue(ctx.engine, first)
    assert again is not None and again.status == outbox.PENDING and again.attempts == 0
    assert outbox.claim(ctx.engine, "w1", LEASE) is not None


def test_an_expired_lease_is_claimed_again_and_the_old_claim_loses_the_row(ctx):
    first = _put(ctx, "city")
    # the same worker name both times (two threads of one process): the claims' tokens differ
    taken = outbox.claim(ctx.engine, "host:1", timedelta(seconds=-1))  # already expired
    assert taken is not None
    again = outbox.claim(ctx.engine, "host:1", LEASE)
    assert again is not None and again.id == first and again.attempts == 2
    assert taken.leased_by != again.leased_by and "host:1" in str(again.leased_by)
    assert not outbox.renew(ctx.engine, taken, LEASE)
    assert not _delivered(ctx, taken)
    assert _failed(ctx, taken, "late", backoff=NO_BACKOFF) is None
    assert outbox.renew(ctx.engine, again, LEASE)
    assert _delivered(ctx, again)
    row = outbox.get(ctx.engine, first)
    assert row is not None and row.status == outbox.DELIVERED and row.last_error is None


def test_a_held_row_waits_without_using_up_its_attempts(ctx):
    first = _put(ctx, "city")
    for _ in range(NO_BACKOFF.max_attempts + 2):
        taken = outbox.claim(ctx.engine, "w1", LEASE)
        assert taken is not None
        status = _failed(
            ctx, taken, "Endpoint/x is off", backoff=NO_BACKOFF, hold=timedelta(seconds=0)
        )
        assert status == outbox.PENDING
    row = outbox.get(ctx.engine, first)
    assert row is not None and row.attempts == 0 and row.status == outbox.PENDING
    assert row.last_error == "held: Endpoint/x is off"
    taken = outbox.claim(ctx.engine, "w1", LEASE)
    assert taken is not None
    assert _failed(ctx, taken, "off", backoff=NO_BACKOFF, hold=timedelta(minutes=5))
    assert outbox.claim(ctx.engine, "w1", LEASE) is None  # held for five minutes


def test_the_doorbell_rings_when_enqueued_rows_are_committed_not_before_or_on_rollback(ctx):
    # an engine of its own: the suite's shared one may be written to by other tests' threads
    engine = make_engine(ctx.engine.url.render_as_string(hide_password=False))
    try:
        _doorbell(engine)
    finally:
        engine.dispose()


def _doorbell(engine) -> None:  # type: ignore[no-untyped-def]
    bell = outbox.Doorbell(engine)
    assert not bell.wait(0)
    seen: list[bool] = []
    with engine.begin() as conn:
        outbox.enqueue(conn, destination="city", channel="fhir", topic="t", payload={})
        seen.append(bell.wait(0))
    assert seen == [False]
    assert bell.wait(0)  # rung once the transaction committed
    assert not bell.wait(0)
    try:
        with engine.begin() as conn:
            outbox.enqueue(conn, destination="city", channel="fhir", topic="t", payload={})
            raise RuntimeError("the unit of work fails")
    except RuntimeError:
        pass
    assert not bell.wait(0)
    with engine.begin() as conn:  # a later transaction on the same pooled connection
        conn.exec_driver_sql("SELECT 1")
    assert not bell.wait(0)


def test_cancelling_a_request_drops_its_waiting_rows_only(ctx):
    mine = _put(ctx, "city", subject="task-1")
    _put(ctx, "city", subject="task-1", topic="images")
    theirs = _put(ctx, "city", subject="task-2")
    with ctx.engine.begin() as conn:
        assert outbox.cancel_subject(conn, "task-1", reason="cancelled by the doctor") == 2
    cancelled = outbox.get(ctx.engine, mine)
    assert cancelled is not None and cancelled.status == outbox.CANCELLED
    nxt = outbox.claim(ctx.engine, "w1", LEASE)
    assert nxt is not None and nxt.id == theirs


def test_depth_counts_by_status_and_gives_the_oldest_waiting_age(ctx):
    assert outbox.depth(ctx.engine).oldest_age() == 0.0
    _put(ctx, "city")
    _put(ctx, "central")
    depth = outbox.depth(ctx.engine)
    assert depth.by_status[outbox.PENDING] == 2 and depth.by_status[outbox.DEAD] == 0
    assert depth.oldest_pending is not None and depth.oldest_age() >= 0.0


def test_backoff_doubles_up_to_its_cap_with_jitter():
    rand = random.Random(7)
    policy = Backoff(base=2, cap=60)
    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (6, 60), (30, 60)]:
        delay = policy.delay(attempts, rand).total_seconds()
        assert ceiling / 2 <= delay <= ceiling


def test_workers_racing_never_take_the_same_row(ctx):
    destinations = [f"d{i}" for i in range(8)]
    for n in range(5):
        for destination in destinations:
            _put(ctx, destination, subject=f"task-{n % 2}")
    taken: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            while True:
                entry = outbox.claim(ctx.engine, name, LEASE)
                if entry is None:
                    if not outbox.depth(ctx.engine).by_status[outbox.PENDING]:
                        return
                    continue
                with lock:
                    taken.append(entry.id)
                assert _delivered(ctx, entry)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(taken) == 40 and len(set(taken)) == 40
