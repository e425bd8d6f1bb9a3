"""The Great Expectations plumbing of the validation step: one file Data Context, two suites, their checkpoints.

The context lives in ``<work_dir>/gx`` and is created once, then re-used: suites, validation definitions and
checkpoints are stored on first use and only replaced when what they hold changes (so their ids and the
Data Docs stay stable across runs). :func:`run_suite` runs one suite on a DataFrame and returns one outcome per
expectation with the ``record_ref`` of every failing row. Runs are keyed on the data interval, not the clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import CriticalValidationError

if TYPE_CHECKING:
    import pandas as pd

GX_DATASOURCE = "evertune_kb"
DOCS_SUITE = "kb_documents"
QA_SUITE = "kb_qa"
#: The column that names a failing row in the results.
GX_ROW_KEY = "record_ref"
#: COMPLETE + the row key tells which rows failed; the values are left out (they may be PII).
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [GX_ROW_KEY],
    "exclude_unexpected_values": True,
    "partial_unexpected_count": 0,
}


@dataclass(frozen=True)
class Check:
    """One expectation and the quarantine reason of the rows it rejects.

    Attributes:
        check: The check's name (``meta.check`` of the expectation).
        reason: The quarantine reason code of a failing row.
        expectation: A class name in ``great_expectations.expectations``.
        kwargs: Its arguments.
    """

    check: str
    reason: str
    expectation: str
    kwargs: dict[str, Any]


@contextlib.contextmanager
def gx_lock(work_dir: Path) -> Iterator[None]:
    """Hold ``<work_dir>/gx.lock`` for the block.

    Concurrent runs (backfills) share one Data Context: get-or-create and the Data Docs build are serialised.
    """
    import fcntl

    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / "gx.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def gx_context(work_dir: Path) -> Any:
    """The file Data Context in ``<work_dir>/gx`` (created on first use), progress bars off."""
    import great_expectations as gx

    # GX keeps its project in <project_root_dir>/gx: that is <work_dir>/gx.
    context = gx.get_context(mode="file", project_root_dir=str(work_dir))
    with contextlib.suppress(AttributeError, TypeError):
        if context.variables.progress_bars is None or context.variables.progress_bars.globally:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            context.variables.save()
    return context


def _batch_definition(context: Any, asset_name: str) -> Any:
    """Get-or-create the pandas datasource, the dataframe asset and its whole-frame batch definition."""
    from great_expectations.exceptions import DataContextError

    try:
        source = context.data_sources.get(GX_DATASOURCE)
    except (LookupError, DataContextError):
        source = context.data_sources.add_pandas(GX_DATASOURCE)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        return asset.get_batch_definition("whole")
    except LookupError:
        return asset.add_batch_definition_whole_dataframe("whole")


def _suite(context: Any, suite_name: str, checks: list[Check], columns: list[str]) -> Any:
    """The stored suite: the exact column set first, then ``checks`` in order (see :func:`_get_or_update_suite`)."""
    import great_expectations as gx

    expectations = [gx.expectations.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True,
                                                                 meta={"check": "schema", "reason": ""})]  # fmt: skip
    for check in checks:
        expectation_class = getattr(gx.expectations, check.expectation)
        expectations.append(expectation_class(**check.kwargs, meta={"check": check.check, "reason": check.reason}))
    return _get_or_update_suite(context, gx.ExpectationSuite(name=suite_name, expectations=expectations))


def _validation_definition(context: Any, suite: Any, batch_definition: Any) -> Any:
    """Re-use ``<suite>_whole`` when it pairs the same suite and batch definition; else store a new one."""
    import great_expectations as gx
    from great_expectations.exceptions import DataContextError

    name = f"{suite.name}_whole"
    try:
        definition = context.validation_definitions.get(name)
        if definition.suite.name == suite.name and definition.batch_definition.name == batch_definition.name:
            return definition
    except (LookupError, DataContextError):
        pass
    return context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )


def gx_checkpoint(context: Any, suite_name: str, checks: list[Check], columns: list[str]) -> Any:
    """Get-or-create the batch definition; create or update the suite, validation definition and checkpoint.

    Args:
        context: The file Data Context (:func:`gx_context`).
        suite_name: :data:`DOCS_SUITE` or :data:`QA_SUITE` (also the asset name).
        checks: The row-level checks, in priority order.
        columns: The exact columns of the frame to validate.

    Returns:
        The checkpoint; it updates the Data Docs and reports failing rows by :data:`GX_ROW_KEY`.
    """
    import great_expectations as gx
    from great_expectations.exceptions import DataContextError

    batch_definition = _batch_definition(context, suite_name)
    definition = _validation_definition(context, _suite(context, suite_name, checks, columns), batch_definition)
    name = f"{suite_name}_checkpoint"
    try:
        checkpoint = context.checkpoints.get(name)
        if (
            [vd.name for vd in checkpoint.validation_definitions] == [definition.name]
            and [type(a).__name__ for a in checkpoint.actions] == ["UpdateDataDocsAction"]
            and checkpoint.result_format == RESULT_FORMAT
        ):
            return checkpoint
    except (LookupError, DataContextError):
        pass
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format=RESULT_FORMAT,
        )
    )


def _expectation_key(expectation: Any) -> str:
    config = expectation.configuration.to_json_dict()
    return json.dumps(
        {k: v for k, v in config.items() if k not in ("id", "rendered_content")}, sort_keys=True, default=str
    )


def _get_or_update_suite(context: Any, wanted: Any) -> Any:
    """Return the stored suite when it already holds exactly ``wanted``'s expectations; else store ``wanted``.

    Unchanged expectations keep their stored ids (GX's own ``add_or_update`` compares ids too, so it never
    matches a freshly built expectation).
    """
    from great_expectations.exceptions import DataContextError

    try:
        stored = context.suites.get(wanted.name)
    except (LookupError, DataContextError):
        return context.suites.add(wanted)
    stored_ids = {_expectation_key(e): e.id for e in stored.expectations}
    wanted_keys = [_expectation_key(e) for e in wanted.expectations]
    if wanted_keys == [_expectation_key(e) for e in stored.expectations]:
        return stored
    for expectation, key in zip(wanted.expectations, wanted_keys, strict=True):
        expectation.id = stored_ids.get(key)
    return context.suites.add_or_update(wanted)


def _failed_refs(result: dict[str, Any]) -> set[str]:
    refs: set[str] = set()
    for item in result.get("unexpected_index_list") or []:
        value = item.get(GX_ROW_KEY) if isinstance(item, dict) else None
        if isinstance(value, list):
            refs.update(str(v) for v in value)
        elif value is not None:
            refs.add(str(value))
    return refs


def run_suite(
    context: Any, suite_name: str, checks: list[Check], frame: pd.DataFrame, interval: str
) -> list[dict[str, Any]]:
    """Run one suite on ``frame``; return per-expectation outcomes with the failing record refs."""
    from great_expectations.core.run_identifier import RunIdentifier

    checkpoint = gx_checkpoint(context, suite_name, checks, list(frame.columns))
    # Keyed on the interval, not the clock: a re-run overwrites the interval's stored results.
    run_time = dt.datetime.combine(dt.date.fromisoformat(interval), dt.time(), tzinfo=dt.UTC)
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(f"kb-{interval}", run_time))
    outcomes: list[dict[str, Any]] = []
    for run_result in outcome.run_results.values():
        for result in run_result.to_json_dict()["results"]:
            config = result["expectation_config"]
            meta = config.get("meta") or {}
            if (result.get("exception_info") or {}).get("raised_exception"):
                message = result["exception_info"].get("exception_message", "unknown error")
                raise CriticalValidationError(
                    f"expectation {meta.get('check')} of suite {suite_name} could not run: {message}",
                    {"suite": suite_name, "check": meta.get("check"), "error": message},
                )
            details = result.get("result") or {}
            failed = _failed_refs(details)
            unexpected = int(details.get("unexpected_count") or 0)
            if unexpected != len(failed) and meta.get("check") != "schema":
                raise RuntimeError(
                    f"GX reported {unexpected} failures of {meta.get('check')} but named {len(failed)} rows"
                )
            outcomes.append({
                "suite": suite_name,
                "check": meta.get("check", ""),
                "reason": meta.get("reason", ""),
                "expectation": config["type"],
                "column": config.get("kwargs", {}).get("column", ""),
                "success": bool(result["success"]),
                "unexpected_count": unexpected,
                "failed_refs": failed,
            })  # fmt: skip
    # GX does not keep the suite's order; the check order is the reason priority, so restore it.
    order = {"schema": -1} | {check.check: i for i, check in enumerate(checks)}
    return sorted(outcomes, key=lambda o: order.get(o["check"], len(order)))


def data_docs_url(context: Any) -> str | None:
    """The URL of the first Data Docs site, if any."""
    sites = context.get_docs_sites_urls()
    return str(sites[0]["site_url"]) if sites else None


