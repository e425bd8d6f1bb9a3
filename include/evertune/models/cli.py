"""``evertune bootstrap``: prepare every model the pipeline needs, offline, once."""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bootstrap`` sub-command."""
    parser = subparsers.add_parser(
        "bootstrap",
        help="convert the base LLM if needed, verify the embedder (export it for an ONNX embed.backend), "
        "build the tiny test model",
        description="Prepare the base LLM, the embedder and the tiny test model. A second run only checks them.",
    )
    parser.add_argument("--params", default=None, help="params file (default: $EVERTUNE_PARAMS or ./params.yaml)")
    parser.add_argument("--force", action="store_true", help="convert / build again even if current")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny test model")
    parser.set_defaults(func=run_bootstrap)


def run_bootstrap(args: argparse.Namespace) -> int:
    """Run ``evertune bootstrap``: prepare the models, print paths, the embedder sha256 and timings.

    Domain errors (ConfigError, BootstrapError) propagate; the CLI entry point turns them into exit code 2.
    """
    from evertune.config import load_params
    from evertune.models import bootstrap, embedder, folders, tiny
    from evertune.runtime import apply_offline_env
    from evertune.settings import get_settings

    apply_offline_env()
    params = load_params(args.params)
    settings = get_settings()
    total = time.perf_counter()

    spec = params.base_model.name_or_path
    started = time.perf_counter()
    if spec.startswith(bootstrap.BOOTSTRAP_PREFIX):
        path, converted = bootstrap._ensure_bootstrapped(
            spec.removeprefix(bootstrap.BOOTSTRAP_PREFIX),
            settings.models_dir,
            expected_sha256=params.base_model.sha256,
            force=args.force,
        )
        marker = folders.read_marker(path) or {}
        state = "converted" if converted else "already current"
        print(f"base model:  {path}  [{state}, {time.perf_counter() - started:.1f} s]")
        print(f"  source:    {marker.get('source', {}).get('file')} sha256 {marker.get('source', {}).get('sha256')}")
        print(f"  weights:   sha256 {marker.get('weights_sha256')}, {folders.folder_size(path) / 1e6:.1f} MB on disk")
    else:
        resolved = bootstrap.resolve_base_model(params.base_model, settings)
        kind = "hub id" if resolved == spec else "local checkpoint"
        revision = f" @ {params.base_model.revision}" if params.base_model.revision else ""
        print(f"base model:  {resolved}{revision}  [{kind}, nothing to convert]")

    started = time.perf_counter()
    embed_path = embedder.resolve_embedder(params.embed.model)
    digest = embedder.verify_embedder(embed_path, params.embed.sha256)
    check = f"sha256 {digest} verified" if digest else "sha256 not checked (embed.sha256 is null or a hub id)"
    print(f"embedder:    {embed_path}  [{check}, {time.perf_counter() - started:.1f} s]")
    started = time.perf_counter()
    exported = embedder.ensure_backend_artifact(params.embed, settings.models_dir, force=args.force)
    if exported is not None:
        folder, artifact_sha, built = exported
        state = "exported" if built else "already current"
        print(f"  {params.embed.backend}:  {folder}  [{state}, sha256 {artifact_sha}, {time.perf_counter() - started:.1f} s]")

    if not args.no_tiny:
        started = time.perf_counter()
        tiny_path, built = tiny._ensure_tiny_model(settings.models_dir, seed=0, force=args.force)
        state = "built" if built else "already current"
        print(f"tiny model:  {tiny_path}  [{state}, {time.perf_counter() - started:.1f} s]")
    print(f"done in {time.perf_counter() - total:.1f} s")
    return 0
