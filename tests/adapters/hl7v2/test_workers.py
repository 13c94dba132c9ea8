"""Messages prepared in worker processes (adapters.hl7v2.workers), written by the gateway's
one writer: same outcome as in-process, and a worker that dies costs no message."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from adapters.hl7v2.ingest import Origin, Reply
from adapters.hl7v2.ingest import Settings as Hl7Settings
from adapters.hl7v2.workers import WORKER_NICE, StagingPool
from gateway.context import Context
from security.principal import SYSTEM
from tests.adapters.hl7v2.conftest import WANG_ID, oru

pytestmark = pytest.mark.slow  # starts processes
MLLP = Origin("mllp", "127.0.0.1")


@pytest.fixture
def pooled(demo: Context) -> Iterator[Context]:
    """A second gateway context on the same database, preparing in one worker process."""
    settings = demo.settings.model_copy(update={"hl7_workers": 1})
    ctx = Context.build(settings, migrate=False, serving=True)
    assert isinstance(ctx.hl7.stager, StagingPool)
    yield ctx
    ctx.close()


@pytest.fixture
def own_pool(demo: Context) -> Iterator[Callable[[str, Hl7Settings], StagingPool]]:
    """The demo's ingest preparing in a one-worker pool the test makes; closed afterwards."""
    pools: list[StagingPool] = []

    def make(database_url: str, settings: Hl7Settings) -> StagingPool:
        pools.append(StagingPool(1, database_url, settings))
        demo.hl7.stager = pools[-1]
        return pools[-1]

    yield make
    demo.hl7.stager = None
    for pool in pools:
        pool.close()


def _pids(pool: StagingPool) -> list[int]:
    return [worker.process.pid for worker in pool.workers]


def _receive(ctx: Context, raw: bytes) -> Reply:
    """As the MLLP listener receives a message: on an event loop (a new one each time)."""
    return asyncio.run(ctx.hl7.receive_async(raw, MLLP, ctx.executor))


def test_a_message_prepared_in_a_worker_reaches_the_record(pooled, demo, monkeypatch):
    prepared_here = []
    monkeypatch.setattr(pooled.hl7, "prepare", lambda *a: prepared_here.append(a))
    reply = _receive(pooled, oru("W-1"))
    assert reply.code == "AA", reply.error
    assert prepared_here == []  # not in this process
    assert _pids(pooled.hl7.stager) and os.getpid() not in _pids(pooled.hl7.stager)
    # the workers give way to the gateway's process
    for pid in _pids(pooled.hl7.stager):
        assert (
            os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE
        )
    wang = demo.records.search(SYSTEM, "Patient", [("identifier", WANG_ID)]).matches[0]
    reports = demo.records.search(SYSTEM, "DiagnosticReport", [("patient", wang.res_id)])
    assert reports.total == 1
    # the archive keeps the raw bytes, which came back from the worker without them
    from records import db, inbound

    with db.reader(demo.engine).connect() as conn:
        assert inbound.get(conn, reply.archive_id).raw == oru("W-1")
    # refusals made in a worker keep segment, field and code
    refused = _receive(pooled, oru("W-2", version="9.9"))
    assert refused.code == "AR" and b"MSH^1^12" in refused.ack


def test_a_worker_that_dies_costs_no_message(pooled, demo):
    assert _receive(pooled, oru("W-3")).code == "AA"
    old = _pids(pooled.hl7.stager)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    # the message in hand is prepared in the gateway's process, a new worker takes the next
    assert _receive(pooled, oru("W-4")).code == "AA"
    assert not set(old) & set(_pids(pooled.hl7.stager))  # replaced
    assert _receive(pooled, oru("W-5")).code == "AA"
    assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 1  # same order: updated
    from records import db, inbound

    with db.reader(demo.engine).connect() as conn:
        total, _ = inbound.listing(conn, outcome="accepted")
    assert total == 3


def test_workers_that_cannot_start_are_not_restarted_in_a_loop(demo, own_pool, monkeypatch, caplog):
    # a worker whose database cannot be opened dies as soon as it starts
    pool = own_pool("nosuchdb://nowhere", demo.hl7.settings)
    started = []
    real_start = pool._start
    monkeypatch.setattr(pool, "_start", lambda: started.append(1) or real_start())

    async def three() -> list[Reply]:
        return [
            await demo.hl7.receive_async(oru(f"DEAD-{n}"), MLLP, demo.executor) for n in range(3)
        ]

    replies = asyncio.run(three())
    assert [r.code for r in replies] == ["AA", "AA", "AA"]  # prepared in this process
    assert started == []  # the replacement waits RESTART_PAUSE; no spawn a message
    assert any("HL7 worker process died (exit code 1)" in r.message for r in caplog.records)


def test_a_message_a_worker_fails_on_is_prepared_here_and_the_worker_goes_on(demo, own_pool):
    # this worker decodes messages without MSH-18 with a codec that does not exist: preparing
    # them fails in a way no refusal covers
    settings = Hl7Settings(sender_charsets={"XINGFU_THC": "no-such-codec"})
    pool = own_pool(demo.settings.resolved_database_url, settings)

    async def two() -> list[Reply]:
        return [
            await demo.hl7.receive_async(oru(f"ODD-{n}", charset=""), MLLP, demo.executor)
            for n in range(2)
        ]

    pid = _pids(pool)
    replies = asyncio.run(two())
    assert _pids(pool) == pid and pool.workers[0].process.is_alive()
    assert [r.code for r in replies] == ["AA", "AA"]  # this process's settings decode them


def test_a_large_message_to_a_starting_worker_does_not_hold_up_the_event_loop(demo, own_pool):
    # 3 MB, far more than a pipe holds, to a worker that is still starting (not reading yet)
    own_pool(demo.settings.resolved_database_url, demo.hl7.settings)
    notes = "".join(f"NTE|{n}||{'心电图报告 ' * 40}\r" for n in range(1, 2000)).encode()
    raw = oru("BIG-1").rstrip(b"\r") + b"\r" + notes

    async def scenario() -> tuple[Reply, float]:
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)  # ticking
        reply = await demo.hl7.receive_async(raw, MLLP, demo.executor)
        ticker.cancel()
        return reply, max(gaps)

    reply, longest = asyncio.run(scenario())
    assert reply.code == "AA", reply.error
    assert longest < 0.25  # the loop kept turning while the worker started and read
