"""Two or more gateway builds side by side: DICOM C-STORE, rounds alternated.

    python bench/dicom_side_by_side.py [--rounds 10] [--kind small|large] [--count 500]
                                       [--associations 4] NAME=CODE_DIR[:VAR=VALUE,...] ...

Each NAME is a ``yilian serve`` started from CODE_DIR (a worktree of another commit, say:
``git worktree add /tmp/base 4e74544``) with the environment variables given (``YILIAN_DICOM_
READERS=0``), each on its own fresh data dir, all running at once. Round after round, each
gateway in turn (the order reversed every other round) receives ``--count`` new instances of
``--kind`` (small: 500 by default; large, 8.4 MB each: 40) from dcmtk storescu over
``--associations`` parallel associations (``dicom_ingest``'s workload and senders). On a
machine whose speed moves from minute to minute, only such alternated rounds compare. What
each round sent is deleted after it, and the data dirs at the end (kept if the run fails).

For each round it reads the machine's steal time (/proc/stat: CPU time the hypervisor gave to
others): a round that lost more than ``--max-steal`` of a core is reported but left out of the
"clean" median. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_ingest import TICK, DataMaker, GatewayReceiver, Senders, settle, tree_ticks  # noqa: E402


def steal_and_total() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


@dataclass
class Build:
    name: str
    receiver: GatewayReceiver
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # ms of the gateway's tree an instance
    steal: list[float] = field(default_factory=list)  # cores lost to steal during the round


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", help="NAME=CODE_DIR[:VAR=VALUE,...]")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kind", choices=("small", "large"), default="small")
    parser.add_argument("--count", type=int, help="instances a round (small 500, large 40)")
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--max-steal", type=float, default=0.05, help="cores, for a clean round")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    count = args.count or (500 if args.kind == "small" else 40)
    builds: list[Build] = []
    try:
        for spec in args.builds:
            name, _, rest = spec.partition("=")
            code, _, variables = rest.partition(":")
            work = Path(tempfile.mkdtemp(prefix=f"side-{name}-"))
            receiver = GatewayReceiver(work, Path(code).resolve())
            for pair in filter(None, variables.split(",")):
                key, _, value = pair.partition("=")
                receiver.gateway.env[key] = value
            receiver.start()
            builds.append(Build(name, receiver))
        maker = DataMaker()
        for k in range(args.rounds):
            for build in builds if k % 2 == 0 else builds[::-1]:
                r = build.receiver
                batch = maker.make(args.kind, count, r.workdir / f"round{k}")
                os.sync()
                senders = Senders(r.port, r.ae, batch.files, args.associations)
                ticks, (steal0, total0) = tree_ticks(r.pid), steal_and_total()
                seconds, errors = senders.run(600, 30)
                settle(r.pid)
                steal1, total1 = steal_and_total()
                shutil.rmtree(r.workdir / f"round{k}")  # sent: large rounds fill a disk fast
                if errors:
                    raise SystemExit(f"{build.name}: {errors[0]}")
                build.rates.append(count / seconds)
                build.cpu.append(1000 * (tree_ticks(r.pid) - ticks) / TICK / count)
                build.steal.append(cores * (steal1 - steal0) / max(1, total1 - total0))
            print(f"round {k + 1}: " + ", ".join(f"{b.name} {b.rates[-1]:.0f}/s" for b in builds))
        for b in builds:
            clean = [x for x, s in zip(b.rates, b.steal, strict=True) if s <= args.max_steal]
            median = f"{statistics.median(clean):.0f}/s" if clean else "-"
            print(
                f"{b.name}: clean median {median} ({len(clean)} of {len(b.rates)} rounds), "
                f"median of all {statistics.median(b.rates):.0f}/s, gateway CPU "
                f"{statistics.median(b.cpu):.2f} ms an instance; rounds "
                + " ".join(
                    f"{x:.0f}" + ("*" if s > args.max_steal else "")
                    for x, s in zip(b.rates, b.steal, strict=True)
                )
                + " (* lost more than the steal limit)"
            )
            held = b.receiver.count()
            if held != count * args.rounds:
                print(f"{b.name}: INVALID, holds {held} of {count * args.rounds} instances")
                return 1
    finally:
        for b in builds:
            b.receiver.stop()
            if sys.exc_info()[0] is None:  # else kept for its serve.log
                shutil.rmtree(b.receiver.workdir, ignore_errors=True)
            else:
                print(f"{b.name}: its data dir and serve.log are kept in {b.receiver.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
