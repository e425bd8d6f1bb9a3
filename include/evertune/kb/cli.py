"""``evertune kb ...``: inspect and operate the published knowledge-base index.

Sub-commands print JSON on stdout. Each handler takes the parsed ``argparse.Namespace`` and returns an exit
code; ``register`` wires them as ``func`` defaults, the convention of the top-level CLI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any


def _context(args: argparse.Namespace) -> tuple[Any, Any]:
    from evertune.config import load_params
    from evertune.runtime import apply_offline_env
    from evertune.settings import get_settings

    apply_offline_env()
    return load_params(getattr(args, "params", None)), get_settings()


def _print(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def cmd_history(args: argparse.Namespace) -> int:
    """Print the publish/rollback/rejection log of the configured table."""
    from evertune.kb.publish import publish_history

    params, settings = _context(args)
    events = publish_history(params, settings)
    if args.limit:
        events = events[-args.limit :]
    _print(events)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Move the publish tag back one publish, or to ``--to``."""
    from evertune.kb.publish import rollback

    params, settings = _context(args)
    _print(rollback(params, settings, to_version=args.to))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Search the published (or a given) version of the knowledge base."""
    from evertune.kb.retrieval import search

    params, settings = _context(args)
    version: int | str = int(args.version) if args.version.isdigit() else args.version
    _print(
        search(
            args.query, params, settings, k=args.k, mode=args.mode, version_or_tag=version, dedupe_docs=args.dedupe_docs
        )
    )
    return 0


def cmd_golden_init(args: argparse.Namespace) -> int:
    """Draft a golden retrieval set from the validated documents into a landing partition, for review."""
    from evertune.kb.golden_drafts import init_command

    params, settings = _context(args)
    partition = args.partition or args.from_landing or dt.datetime.now(dt.UTC).date().isoformat()
    result = init_command(
        settings, partition, from_landing=args.from_landing, params=params, per_doc=args.per_doc, seed=args.seed,
        overwrite=args.force,
    )  # fmt: skip
    _print(result)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``kb`` command group (history, rollback, search, golden init) to a top-level CLI.

    Args:
        subparsers: The result of ``parser.add_subparsers()`` of the top-level parser.

    Returns:
        The ``kb`` parser.
    """
    kb = subparsers.add_parser("kb", help="inspect and operate the published knowledge-base index")
    commands = kb.add_subparsers(dest="kb_command", required=True, metavar="{history,rollback,search,golden}")

    history = commands.add_parser("history", help="publish / rollback / rejection log")
    history.add_argument("--limit", type=int, default=0, help="only the last N events")
    history.set_defaults(func=cmd_history)

    back = commands.add_parser("rollback", help="point the publish tag at the previous published version")
    back.add_argument("--to", type=int, default=None, metavar="VERSION", help="roll back to this table version")
    back.set_defaults(func=cmd_rollback)

    find = commands.add_parser("search", help="search the published knowledge base")
    find.add_argument("query")
    find.add_argument("-k", type=int, default=None, help="results (default retrieval.k)")
    find.add_argument("--mode", choices=["hybrid", "vector", "fts"], default=None, help="default retrieval.mode")
    find.add_argument(
        "--version", default="production", help="tag, version number or 'latest' (default: the publish tag)"
    )
    find.add_argument("--dedupe-docs", action="store_true", help="best chunk per document only")
    find.set_defaults(func=cmd_search)

    golden = commands.add_parser("golden", help="golden retrieval set (see docs/golden-sets.md)")
    golden_commands = golden.add_subparsers(dest="golden_command", required=True, metavar="{init}")
    init = golden_commands.add_parser("init", help="draft golden queries from the documents into the landing zone")
    init.add_argument(
        "--partition",
        default=None,
        metavar="YYYY-MM-DD",
        help="landing partition to write (default: --from-landing, else today)",
    )
    init.add_argument(
        "--from-landing", default=None, metavar="YYYY-MM-DD", help="draft from this landing partition's documents"
    )
    init.add_argument("--per-doc", type=int, default=3, help="at most this many drafts per document (default 3)")
    init.add_argument("--seed", type=int, default=0, help="draft selection seed (default 0)")
    init.add_argument("--force", action="store_true", help="replace an existing golden/retrieval.jsonl")
    init.set_defaults(func=cmd_golden_init)
    return kb
