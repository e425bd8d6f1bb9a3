"""Generate ``dvc.yaml`` from the step registry: one stage per step, with complete deps, params and receipts.

* ``demo_data`` writes the demo landing zone;
* every ``refresh`` step is a ``foreach`` stage over the intervals (``ingest_documents@2026-11-03``...); a
  ``serial`` step (``plan_shards``, the first to read the index) also depends on the previous interval's ``publish`` receipt (:data:`FOLD_END`,
  the end of the fold: the post-publish freshness check only reads), so that ``dvc repro`` folds the days into
  the index in order, as the DAG does (the first interval's extra dependency is its own upstream receipt);
* every ``tune`` step is one stage for ``tune_as_of``; its ``window`` steps' receipts of every interval up to
  ``tune_as_of`` are deps too (the versioned snapshots for the dataset, the published index for training).

A stage's ``deps`` are its code (the ``include/evertune`` modules its callable can import, found statically by
:func:`code_deps`; plus the step's declared resources), the receipts of its upstream steps and, for the first
step of each pipeline, its input (the landing partition; the versioned intervals and the published index).
Its ``params`` are the ``params.yaml`` sections the step declares. Its output is its **receipt**, the small JSON
summary the command line writes: the real results live in shared stores (the data repository's DVC, LanceDB,
MLflow) that cannot be stage outputs, since DVC forbids overlapping outputs.

The paths assume the default locations (``EVERTUNE_HOME`` and ``EVERTUNE_WORK_DIR`` unset: ``.evertune/``).
``tests/unit/test_dvc_stages.py`` checks that the committed ``dvc.yaml`` equals :func:`render_dvc_yaml`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

import yaml

from evertune.pipeline import REFRESH, TUNE, Step, step_named, steps_of, upstream_steps

REPO_ROOT = Path(__file__).resolve().parents[2]
INCLUDE = REPO_ROOT / "include"
#: The default state folder and work dir, relative to the repository (see :mod:`evertune.settings`).
HOME = ".evertune"
WORK_DIR = f"{HOME}/work"
#: The refresh step that ends one interval's fold into the index: the next interval's serial step waits for it.
FOLD_END = "publish"

#: The demo's good days (day 6 carries the poisoned QA drop): the intervals of the committed dvc.yaml.
DEFAULT_INTERVALS = ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05")
#: What every step stage runs through besides its callable: the registry and the command line's step runner.
RUNNERS = ("evertune.pipeline", "evertune.pipeline_cli:run_steps")

HEADER = """\
# GENERATED from the step registry (include/evertune/pipeline.py) by `evertune dvc-yaml --out dvc.yaml`:
# do not edit by hand. tests/unit/test_dvc_stages.py fails when this file and the registry disagree.
#
# `dvc repro` runs the same steps as the Airflow tasks (`python -m evertune refresh|tune <step>`), reading the
# same params.yaml, with state in the default .evertune/ (leave EVERTUNE_HOME unset). One stage per step; the
# refresh steps run once per interval (`dvc repro publish_index@2026-11-03`); plan_shards waits for the previous
# interval's publish_index (plan_shards_after), so days fold into the index in order; embed_shard embeds every
# shard of the plan in one process (Airflow maps it, one task per shard). Outputs are the receipts:
# the data itself lives in stores DVC cannot track as outputs (the data repository, LanceDB, MLflow).
# Other days: `evertune dvc-yaml --intervals 2026-11-01 2026-11-02 --out dvc.yaml`.
"""


def _module_file(module: str) -> Path | None:
    """The file of an ``evertune`` module (``__init__.py`` for a package), or ``None`` if it is not ours."""
    base = INCLUDE.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _module_imports(path: Path, package: str, entry: str | None) -> frozenset[str]:
    """The ``evertune`` imports of one module, or of one of its functions (cached: stages share modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return frozenset(_imports(_entry_nodes(tree, entry) if entry else list(tree.body), package))


def _imports(nodes: list[ast.AST], package: str) -> set[str]:
    """Modules (and ``from`` members, which may be modules) imported anywhere under ``nodes``."""
    found: set[str] = set()
    for node in (child for top in nodes for child in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "evertune"}


def _entry_nodes(tree: ast.Module, function: str) -> list[ast.AST]:
    """The module-level statements a function depends on: its imports, itself and the module functions it uses."""
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    functions = {node.name: node for node in tree.body if isinstance(node, definitions)}
    nodes: list[ast.AST] = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    pending, seen = [function], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        nodes.append(functions[name])
        pending += [node.id for node in ast.walk(functions[name]) if isinstance(node, ast.Name)]
    return nodes


def code_deps(target: str, runners: tuple[str, ...] = ()) -> list[str]:
    """Repository paths of the ``evertune`` code a callable can run, found statically.

    Starts from ``module:function`` (only that function, the module functions it names and the module's
    top-level imports) and follows every import of every reached module, function-level ones included, plus the
    parent packages. A reached package's data files and plain folders (prompt templates, the demo catalogue,
    the local metric scripts) count too.

    Args:
        target: ``module:function``, or a bare module name for all of it.
        runners: More targets of the same form that run it (followed the same way).

    Returns:
        Sorted paths relative to the repository root.
    """
    reached: set[Path] = set()
    complete: set[Path] = set()  # modules followed whole (an entry module is followed from one function)
    pending: list[tuple[str, str | None]] = []
    for entry_target in (target, *runners):
        module, _, function = entry_target.partition(":")
        pending.append((module, function or None))
    while pending:
        name, entry = pending.pop()
        path = _module_file(name)
        if path is None or path in complete:
            continue
        reached.add(path)
        if entry is None:
            complete.add(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        pending += [(found, None) for found in sorted(_module_imports(path, package, entry) | set(parents))]
    deps = set(reached)
    for path in reached:
        if path.name == "__init__.py":
            deps |= _package_data(path.parent)
    return sorted(str(p.relative_to(REPO_ROOT)) for p in deps)


def _package_data(folder: Path) -> set[Path]:
    """What a package folder holds besides Python modules and subpackages: data files and plain folders."""
    found = set()
    for entry in folder.iterdir():
        if entry.name == "__pycache__" or entry.suffix in {".py", ".pyc"}:
            continue
        if entry.is_file() or (entry.is_dir() and not (entry / "__init__.py").is_file()):
            found.add(entry)
    return found


def _receipt(step: Step, key: str) -> str:
    return str(step.receipt(Path(WORK_DIR), key))


def _stage(step: Step, key: str, inputs: list[str]) -> dict[str, Any]:
    option = f"--interval {key}" if step.pipeline == REFRESH else f"--as-of {key}"
    stage: dict[str, Any] = {
        "cmd": f"python -m evertune {step.pipeline} {step.name} {option}",
        "deps": list(dict.fromkeys([*inputs, *(_receipt(source, key) for source in upstream_steps(step)),
                                    *code_deps(step.target, RUNNERS), *step.resources])),
    }
    if step.params:
        stage["params"] = list(step.params)
    stage["outs"] = [{_receipt(step, key): {"cache": False}}]
    return stage


def build_dvc_yaml(intervals: tuple[str, ...], tune_as_of: str) -> dict[str, Any]:
    """The ``dvc.yaml`` document for the given refresh intervals and tuning ``as_of``."""
    stages: dict[str, Any] = {
        "demo_data": {
            "cmd": f"python -m evertune demo-data --out {HOME}/landing",
            "deps": code_deps("evertune.demo.cli"),
            "params": ["demo", "ingest.max_file_bytes"],
            "outs": [{f"{HOME}/landing": {"cache": False}}],
        },
    }
    refresh = steps_of(REFRESH)
    chains: list[dict[str, Any]] = []
    for step in refresh:
        if step.serial:
            first = _receipt(upstream_steps(step)[0], intervals[0])
            previous = [_receipt(step_named(REFRESH, FOLD_END), day) for day in intervals[:-1]]
            chains.append({f"{step.task_id}_after": dict(zip(intervals, [first, *previous], strict=True))})
            stages[step.task_id] = {"foreach": f"${{{step.task_id}_after}}", "do": _stage(step, "${key}", ["${item}"])}
            continue
        inputs = [f"{HOME}/landing/ds=${{item}}"] if not step.upstream else []
        stages[step.task_id] = {"foreach": "${intervals}", "do": _stage(step, "${item}", inputs)}
    window = [day for day in intervals if day <= tune_as_of]
    for step in steps_of(TUNE):
        inputs = [_receipt(step_named(REFRESH, name), day) for name in step.window for day in window]
        stages[step.task_id] = _stage(step, "${tune_as_of}", inputs)
    return {"vars": [{"intervals": list(intervals)}, *chains, {"tune_as_of": tune_as_of}], "stages": stages}


def render_dvc_yaml(intervals: tuple[str, ...] = DEFAULT_INTERVALS, tune_as_of: str | None = None) -> str:
    """The text of ``dvc.yaml``: :data:`HEADER` and :func:`build_dvc_yaml`, in a stable layout."""
    document = build_dvc_yaml(tuple(intervals), tune_as_of or intervals[-1])
    return HEADER + "\n" + yaml.safe_dump(document, sort_keys=False, width=120, default_flow_style=False)
