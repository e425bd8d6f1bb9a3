"""The ``evertune`` command line: the same entry points that DVC stages and Airflow tasks call.

Sub-commands are contributed by modules that expose ``register(subparsers)``; each sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from evertune.errors import EvertuneError
from evertune.runtime import apply_offline_env

#: Modules contributing sub-commands; a module that is not there yet is skipped.
COMMAND_MODULES = (
    "evertune.models.cli",
    "evertune.demo.cli",
    "evertune.kb.cli",
    "evertune.tuning.cli",
    "evertune.tuning.mlflow_access",
    "evertune.pipeline_cli",
    "evertune.serving.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="evertune", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    check = subparsers.add_parser("check-config", help="validate params.yaml and print the resolved settings")
    check.add_argument("--params", default=None, help="params file (default: $EVERTUNE_PARAMS or ./params.yaml)")
    check.set_defaults(func=_check_config)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def _check_config(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from evertune.config import load_params
    from evertune.settings import get_settings

    params = load_params(args.params)
    print(json.dumps({"params_hash": params.section_hash(), "settings": {k: str(v) for k, v in asdict(get_settings()).items()}}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; domain errors become a one-line message and exit code 2."""
    apply_offline_env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EvertuneError as exc:
        print(f"evertune: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
