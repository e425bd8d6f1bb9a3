"""``python -m bench [kb_throughput|kb_incremental|kb_query|kb_query_scale|kb_shards|train|embed_backends|embed_pipeline|query_embedding|answer_quality|answer_cache|eval_memo ...] [--quick]``.

Without a name every benchmark runs, in the order below (``kb_query`` then reuses the table that
``kb_incremental`` built). ``--quick`` shrinks each one to a smoke run of well under a minute of work.
``answer_quality`` and ``eval_memo`` run only when named: they read a finished demo (``EVERTUNE_HOME``), not a scratch
state (``eval_memo`` changes it: a disposable one).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

BENCHMARKS = ("kb_throughput", "kb_incremental", "kb_query", "kb_query_scale", "kb_shards", "train", "embed_backends",
              "embed_pipeline", "query_embedding", "answer_quality", "answer_cache", "eval_memo")
#: Benchmarks that need a state a person made first; left out of the default run.
ON_DEMAND = ("answer_quality", "eval_memo")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the chosen benchmarks; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or [name for name in BENCHMARKS if name not in ON_DEMAND]
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        t0 = time.perf_counter()
        module.run(quick=args.quick)
        print(f"[{name} took {time.perf_counter() - t0:.0f} s]", flush=True)
    print(f"\nbenchmarks done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
