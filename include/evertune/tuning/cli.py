"""``evertune model ...``: inspect the registry, promote a version by hand, roll the champion back.

evertune model status                      versions, aliases, champion history, deletion state (JSON)
evertune model promote --version 7         manual approval (e.g. after drift.policy=require_approval)
evertune model rollback                    champion -> previous champion (and the prompt production alias)
evertune model show 7                      the release manifest (sha256 verified) and the decision/approval tags
"""

from __future__ import annotations

import argparse
import getpass
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``model`` command group to the ``evertune`` CLI."""
    model = subparsers.add_parser("model", help="registered model: status, show, promote, rollback")
    model.add_argument("--params", default=None, help="params file (default: $EVERTUNE_PARAMS or ./params.yaml)")
    model.add_argument("--name", default=None, help="registered model name (default: register.model_name)")
    actions = model.add_subparsers(dest="model_command", required=True)

    status = actions.add_parser("status", help="versions, aliases and champion history as JSON")
    status.set_defaults(func=_status)

    promote = actions.add_parser("promote", help="make a version champion (manual approval path)")
    promote.add_argument("--version", type=int, required=True, help="the version to promote")
    promote.add_argument("--approved-by", default=None, help="who approves (default: the current user)")
    promote.add_argument("--force", action="store_true", help="promote even a version the gate rejected")
    promote.set_defaults(func=_promote)

    rollback = actions.add_parser("rollback", help="restore the previous champion and its prompt version")
    rollback.set_defaults(func=_rollback)

    show = actions.add_parser("show", help="a version's release manifest, verified, with its decision tags")
    show.add_argument("version", type=int, help="the model version")
    show.set_defaults(func=_show)


def _name(args: argparse.Namespace) -> str:
    from evertune.config import load_params

    return args.name or load_params(args.params).registry.model_name


def _print(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _status(args: argparse.Namespace) -> int:
    from evertune.config import load_params
    from evertune.tuning.deletions import model_status_with_deletions

    policy = load_params(args.params).deletion.model_policy
    _print(model_status_with_deletions(_name(args), None, policy))
    return 0


def _promote(args: argparse.Namespace) -> int:
    from evertune.config import load_params
    from evertune.tuning.promotion import promote

    approved_by = args.approved_by or getpass.getuser()
    result = promote(_name(args), args.version, None, approved_by=approved_by, force=args.force,
                     params=load_params(args.params))
    _print(result.to_dict())
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from evertune.config import load_params
    from evertune.tuning.promotion import rollback

    _print(rollback(_name(args), params=load_params(args.params)).to_dict())
    return 0


def _show(args: argparse.Namespace) -> int:
    """Print the version's release record; exit 1 when its manifest is missing or fails its sha256 check."""
    from evertune.tuning.manifest import release_record
    from evertune.tuning.tracking import mlflow_client

    record = release_record(mlflow_client(), _name(args), args.version)
    _print(record)
    return 0 if record.get("verified") else 1
