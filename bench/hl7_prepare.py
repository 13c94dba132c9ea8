"""CPU of preparing one HL7 v2 message (``Hl7Ingest.prepare``), in this process.

    taskset -c 1 python bench/hl7_prepare.py [--messages 200] [--passes 7] [--profile N]

Preparing (parse, translate, R4 check, index rows, identifier look-up, binding) is what the
gateway's HL7 worker processes do for each message; this measures it alone, on a fresh SQLite
database with the demo loaded and the first 40 messages of bench/hl7_ingest.py's workload
ingested (so patients and visits are matched, as in the end-to-end run). Figures are CPU time
of this thread (``time.thread_time``) per message: best and median of the passes. Pin it with
``taskset``: the two vCPUs of the bench machine differ by up to 40% (docs/benchmarks.md).
``--profile N`` prints cProfile's top N functions (by own time) over one more pass,
``--sample`` pyinstrument's tree (sampling, less distorted) over three. The ingest keeps its
snapshot connection between messages, as a worker process does (``hold_reader``);
``--pooled-reader`` takes one from the pool for each message instead, as the gateway's own
process does.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.hl7v2.ingest import Origin  # noqa: E402
from bench.hl7_ingest import Workload  # noqa: E402
from gateway import demo as demo_data  # noqa: E402
from gateway.context import Context  # noqa: E402
from gateway.settings import Settings  # noqa: E402

WARM = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--sample", action="store_true", help="pyinstrument over 3 more passes")
    parser.add_argument(
        "--pooled-reader", action="store_true", help="a connection from the pool per message"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="yilian-prepare-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=f"sqlite:///{tmp}/bench.db",
            mllp_port=0,
            dicom_port=0,
            hl7_workers=0,
        )
        ctx = Context.build(settings)
        try:
            demo_data.load(ctx)
            origin = Origin("mllp", "127.0.0.1")
            ctx.hl7.hold_reader = not args.pooled_reader  # as a worker process prepares
            frames = [frame[1:-2] for _, frame in Workload().take(WARM + args.messages)]
            for raw in frames[:WARM]:
                reply = ctx.hl7.receive(raw, origin)
                assert reply.code == "AA", reply
            measured = frames[WARM:]
            for raw in measured:  # warm caches and imports once
                assert ctx.hl7.prepare(raw, origin).staged is not None
            per_message: list[float] = []
            for _ in range(args.passes):
                start = time.thread_time()
                for raw in measured:
                    ctx.hl7.prepare(raw, origin)
                per_message.append((time.thread_time() - start) * 1000 / len(measured))
            print(
                f"prepare: {len(measured)} messages x {args.passes} passes, CPU ms/message: "
                f"best {min(per_message):.2f}, median {statistics.median(per_message):.2f} "
                f"({', '.join(f'{x:.2f}' for x in per_message)})"
            )
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for raw in measured:
                    ctx.hl7.prepare(raw, origin)
                profiler.disable()
                stats = pstats.Stats(profiler)
                stats.sort_stats("tottime").print_stats(args.profile)
                stats.sort_stats("cumulative").print_stats(args.profile * 2)
            if args.sample:
                from pyinstrument import Profiler

                sampler = Profiler(interval=0.0002)
                sampler.start()
                for _ in range(3):
                    for raw in measured:
                        ctx.hl7.prepare(raw, origin)
                sampler.stop()
                print(sampler.output_text(unicode=False, color=False, show_all=False))
        finally:
            ctx.close()


if __name__ == "__main__":
    main()
