"""``evertune demo-data``: write the demo landing zone (one partition per day)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo-data`` sub-command.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        The sub-command's parser (its handler is ``args.func``).
    """
    parser = subparsers.add_parser(
        "demo-data",
        help="generate deterministic daily help-center drops into the landing zone",
        description="Write ds=YYYY-MM-DD partitions of the Nimbus Notes demo help center. Defaults come from "
        "params.yaml (demo.*, ingest.max_file_bytes) and the landing zone from EVERTUNE_LANDING_URI.",
    )
    parser.add_argument("--out", default=None, help="landing folder (default: settings landing_uri)")
    parser.add_argument("--start", default=None, help="first day, YYYY-MM-DD (default: demo.start_date)")
    parser.add_argument("--days", type=int, default=None, help="number of days (default: demo.days)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: demo.seed)")
    parser.add_argument("--n-articles", type=int, default=None, help="articles on day 1 (default: demo.n_articles)")
    parser.add_argument("--max-file-bytes", type=int, default=None,
                        help="size limit the oversized record exceeds by one byte (default: ingest.max_file_bytes)")
    parser.set_defaults(func=run_demo_data)
    return parser


def run_demo_data(args: argparse.Namespace) -> int:
    """Generate the drops and print one summary line per day.

    Returns:
        0 on success (domain errors propagate as :class:`evertune.errors.EvertuneError`).
    """
    from evertune.config import load_params
    from evertune.demo.generator import generate_range
    from evertune.settings import get_settings

    params = load_params()
    demo = params.demo
    out = args.out or get_settings().landing_uri
    manifests = generate_range(
        out,
        start_date=args.start or demo.start_date,
        days=args.days if args.days is not None else demo.days,
        seed=args.seed if args.seed is not None else demo.seed,
        n_articles=args.n_articles if args.n_articles is not None else demo.n_articles,
        max_file_bytes=args.max_file_bytes if args.max_file_bytes is not None else params.ingest.max_file_bytes,
    )
    for m in manifests:
        flags = "".join(f" [{flag}]" for flag in ("drift", "poisoned") if m[flag])
        changes = "".join(f" [{c['fact_key']}: {c['old']} -> {c['new']}]" for c in m["fact_changes"])
        print(f"ds={m['date']} day {m['day']}: +{len(m['added'])} added, {len(m['edited'])} edited, "
              f"{len(m['deleted'])} deleted, {m['counts']['qa']} qa, {len(m['bad_records'])} bad records"
              f"{flags}{changes}")
    print(f"wrote {len(manifests)} partition(s) under {out}")
    return 0
