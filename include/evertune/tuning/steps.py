"""The steps of continuous tuning, one function per ``tune_model`` task (and ``evertune tune`` command).

Data flows as small JSON-able dicts (XCom); files live in the data repository (datasets, versioned with DVC),
in ``$EVERTUNE_WORK_DIR/tune/<candidate>`` (checkpoints) and in MLflow (runs, models, registry).

* ``build_dataset``: the SFT dataset of the window ending at ``as_of`` (the newest validated interval by
  default), each prompt rendered as served with chunks of the KB version published at build time (pinned for
  the run: ``kb_version``), plus the frozen golden QA set, versioned with DVC. A window where too many answers contradict the
  articles they cite is rejected here (``PoisonedDataError``, logged to ``<work_dir>/tune/rejections.jsonl``):
  nothing is trained or registered, so the champion stays.
* ``check_drift``: new training data vs the champion's (restored from its recorded data version).
* ``train_candidate``: LoRA SFT. Skipped when a registered version already has the same candidate key
  (data version + KB version + params hash + base model): re-running the same inputs adds nothing.
* ``evaluate_candidate`` and ``gate_candidate`` (in :mod:`evertune.tuning.evaluation`): challenger, champion and
  the untuned base model on the golden set through the served answer path, freshness on the changed-fact probes,
  then the pure gate decision.
* ``register`` and ``promote`` live in :mod:`evertune.tuning.release`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.config import Params, apply_overrides, load_params
from evertune.data import snapshot
from evertune.data.versioning import DataRepo
from evertune.errors import NothingToDo, PoisonedDataError
from evertune.settings import Settings, get_settings
from evertune.tuning.rejections import log_excluded, record_rejection

if TYPE_CHECKING:
    from evertune.tuning.contexts import ContextBuilder

log = logging.getLogger(__name__)



def _context(overrides: dict[str, Any] | None) -> tuple[Params, Settings]:
    settings = get_settings()
    settings.ensure_local_dirs()
    return apply_overrides(load_params(), overrides), settings


def validated_intervals(settings: Settings) -> list[str]:
    """Intervals whose validated snapshot has been versioned, oldest first."""
    repo = DataRepo(settings)
    if not (repo.root / ".git").is_dir():
        return []
    return [row["key"].split("/", 1)[1] for row in repo.history("validated/")]


def resolve_as_of(as_of: str | None, settings: Settings) -> str:
    """The last interval of the training window: ``as_of`` if versioned, else the newest one before it.

    Raises:
        NothingToDo: No validated data has been versioned (yet).
    """
    intervals = [day for day in validated_intervals(settings) if as_of is None or day <= as_of]
    if not intervals:
        raise NothingToDo(f"no validated data versioned{f' up to {as_of}' if as_of else ''}: nothing to tune on")
    return intervals[-1]


def dataset_folder(as_of: str) -> str:
    """Folder of the SFT dataset built for ``as_of``, relative to the data repo."""
    return f"datasets/sft/as_of={as_of}"


def build_dataset(
    as_of: str | None = None, overrides: dict[str, Any] | None = None, dag_run_id: str | None = None
) -> dict[str, Any]:
    """Build, write and version the SFT dataset of the window ending at ``as_of``.

    Args:
        as_of: Last interval to include; default the newest validated interval.
        overrides: Per-run overrides of ``params.yaml``.
        dag_run_id: The Airflow run, recorded with a rejection.

    The frozen golden QA file (``golden_qa.jsonl`` of the dataset folder) is the golden QA set carried to
    ``as_of`` (every validated drop up to it folded, fitted to the documents), so a window whose as-of day has no
    golden file still has one. The training exclusion covers every golden QA id and question ever dropped up to
    ``as_of``, also those older than the window and those retired since.

    Prompts hold chunks of the KB version published now (:func:`_training_contexts`), pinned for the run.

    Returns:
        ``as_of``, the dataset folder, its fingerprint, the DVC data version and git revision, ``kb_version``
        (``<table>@v<N>``, the pinned KB version), ``golden_qa`` (the frozen set's summary and versions) and counts
        (``stats["grounding"]`` lists the QA rows dropped as not grounded in their article, ``stats["context"]``
        the KB, template and budget of the contexts).

    Raises:
        PoisonedDataError: Too many QA answers of the window are not grounded in the article they cite; nothing
            is written or versioned, and the rejection is appended to :func:`evertune.tuning.rejections.rejections_path`.
        NoGoldenSetError: The carried golden QA set is empty (nothing to evaluate a candidate on); nothing is
            written or versioned.
        NothingToDo: No knowledge-base version is published yet (checked after the groundedness rejection).
    """
    from evertune.kb.golden import QA, require_golden
    from evertune.kb.golden_carry import carried_golden, log_golden
    from evertune.tuning.dataset import build_sft_dataset, write_sft_dataset
    from evertune.tuning.history import collect_deleted_doc_ids, current_documents, select_interval_dirs

    params, settings = _context(overrides)
    as_of = resolve_as_of(as_of, settings)
    dirs = select_interval_dirs(settings.data_repo / "validated", as_of, params.dataset.window_days)
    # Articles and tombstones come from the whole history up to as_of: the window's QA may cite an article (or a
    # deletion) older than the window.
    history = select_interval_dirs(settings.data_repo / "validated", as_of, None)
    documents = current_documents(history)
    deleted = collect_deleted_doc_ids(history, documents)
    # The golden QA set carried to as_of; every id and question any golden drop ever held is kept out of training.
    golden = carried_golden(settings.data_repo / "validated", as_of, QA)
    golden_summary = log_golden(golden, log)
    frozen = require_golden(golden.fitted)  # NoGoldenSetError now, not "nothing to score" after training
    try:
        dataset = build_sft_dataset(dirs, params.dataset, golden_qa_ids=set(golden.seen_ids), deleted_doc_ids=deleted,
                                    documents=list(documents.values()), golden_questions=golden.seen_texts,
                                    contexts=_training_contexts(params, settings))
    except PoisonedDataError as exc:
        record_rejection(settings, as_of, dag_run_id, exc)
        raise
    grounding = dataset.stats["grounding"]
    log.info("grounding: %d of %d checked QA rows dropped as not grounded, %d without their article in the window",
             grounding["ungrounded"], grounding["checked"], grounding["source_missing"])
    log_excluded(grounding["excluded"], logging.WARNING)
    folder = dataset_folder(as_of)
    written = write_sft_dataset(dataset, settings.data_repo / folder)
    # The carried golden QA set as of as_of is frozen with the dataset (its canonical bytes); never trained on.
    snapshot.write(written.path, {snapshot.GOLDEN_QA: list(frozen.items)})
    version = DataRepo(settings).version_folder(folder, f"sft/{as_of}", f"SFT dataset as of {as_of}")
    summary = {
        "as_of": as_of,
        "intervals": [d.name.removeprefix("ds=") for d in dirs],
        "path": str(written.path),
        "folder": folder,
        "fingerprint": written.fingerprint,
        "data_version": version.data_version,
        "data_git_rev": version.git_rev,
        "kb_version": dataset.stats["context"]["kb_version"],
        "n_train": len(dataset.train),
        "n_validation": len(dataset.validation),
        "golden_qa": golden_summary,
        "stats": dataset.stats,
    }
    log.info("dataset %s: %d train / %d validation rows", version.data_version, len(dataset.train),
             len(dataset.validation))
    return summary


def _training_contexts(params: Params, settings: Settings) -> Callable[[], ContextBuilder]:
    """Makes the dataset's :class:`~evertune.tuning.contexts.ContextBuilder`: the KB version published when it is
    called (pinned: training and evaluation use it, whatever is published meanwhile) and the base model's tokenizer
    (token counts within ``train.max_length``). Raises ``NothingToDo`` while no KB version is published."""
    from evertune.tuning.contexts import context_builder

    return lambda: context_builder(params, settings, _published_kb_version(params, settings))


def _tuning_run(params: Params, settings: Settings, dataset: dict[str, Any], dag_run_id: str | None) -> str:
    """The MLflow run that gathers drift, training, evaluation and gate of one tuning attempt (reused on retry)."""
    from evertune.tuning.tracking import configure_mlflow

    client, experiment_id = configure_mlflow(params, settings)
    key = f"{dag_run_id or 'cli'}|{dataset['data_version']}"
    found = client.search_runs([experiment_id], filter_string=f"tags.evertune_attempt = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"tune as_of={dataset['as_of']}",
        tags={"evertune_attempt": key, "airflow_run_id": dag_run_id or "", "data_version": dataset["data_version"],
              "as_of": dataset["as_of"]},
    )
    return run.info.run_id


def _champion_reference(params: Params, settings: Settings) -> dict[str, Any] | None:
    """The champion's version and the data version it was trained on, if there is a champion (and whether it was
    trained on a since-deleted document: ``carries_deleted_docs``)."""
    from evertune.tuning.deletions import carries_deleted_docs
    from evertune.tuning.registry import champion_with_tags

    champion = champion_with_tags(params.registry.model_name, settings=settings)
    if champion is None:
        return None
    version, tags = champion
    return {"version": version, "data_version": tags.get("data_version"), "data_git_rev": tags.get("data_git_rev"),
            "data_folder": tags.get("data_folder"), "carries_deleted_docs": carries_deleted_docs(tags)}


def _restore_reference(settings: Settings, reference: dict[str, Any]) -> Path:
    """Materialise the champion's training dataset (from the DVC remote, at its recorded git revision)."""
    restored = settings.work_dir / "tune" / "reference" / reference["data_git_rev"][:12]
    if not (restored / "train.jsonl").is_file():
        shutil.rmtree(restored, ignore_errors=True)
        restored.parent.mkdir(parents=True, exist_ok=True)
        DataRepo(settings).restore(reference["data_git_rev"], reference["data_folder"], restored)
    return restored


def check_drift(
    dataset: dict[str, Any], overrides: dict[str, Any] | None = None, dag_run_id: str | None = None
) -> dict[str, Any]:
    """Compare the new training data with the champion's training data and log the result to MLflow.

    Returns:
        ``run_id`` (the tuning run in MLflow), ``reference`` (champion version and data version, or ``None``)
        and ``report`` (the drift report, ``severity`` ``none`` with a reason when there is no champion).
    """
    import mlflow

    from evertune.models.embedder import load_embedder
    from evertune.tuning.dataset import drift_inputs, read_sft_jsonl
    from evertune.tuning.drift import check_drift as run_checks
    from evertune.tuning.figures import log_drift_histograms

    params, settings = _context(overrides)
    run_id = _tuning_run(params, settings, dataset, dag_run_id)
    reference = _champion_reference(params, settings)
    client = mlflow.tracking.MlflowClient()
    if reference is None or not reference.get("data_git_rev"):
        report = {"severity": "none", "reasons": ["no champion with recorded training data: drift not measured"]}
        client.set_tag(run_id, "drift_severity", "none")
        client.set_tag(run_id, "drift_reference", "none")
        return {"run_id": run_id, "reference": reference, "report": report}
    restored = _restore_reference(settings, reference)
    ref_texts, ref_cats = drift_inputs(read_sft_jsonl(restored / "train.jsonl"))
    cur_texts, cur_cats = drift_inputs(read_sft_jsonl(Path(dataset["path"]) / "train.jsonl"))
    embedder = load_embedder(params.embed)
    result = run_checks(ref_texts, cur_texts, embedder.encode, params.drift, params.project.seed,
                        reference_categories=ref_cats, current_categories=cur_cats)
    logged = result.to_mlflow()
    for key, value in logged.get("metrics", {}).items():
        client.log_metric(run_id, key, float(value))
    for key, value in logged.get("params", {}).items():
        client.log_param(run_id, key, value)
    client.set_tag(run_id, "drift_severity", result.severity)
    client.set_tag(run_id, "drift_reference", f"v{reference['version']} {reference['data_version']}")
    report = result.to_dict()
    client.log_dict(run_id, report, "drift/report.json")
    log_drift_histograms(client, run_id, (ref_texts, ref_cats), (cur_texts, cur_cats), report)
    log.info("drift vs champion v%s (%s): %s", reference["version"], reference["data_version"], result.severity)
    for reason in result.reasons:
        log.info("  %s", reason)
    return {"run_id": run_id, "reference": reference, "report": report}


def _published_kb_version(params: Params, settings: Settings) -> str:
    from evertune.kb.index import connect, open_table, published_version, table_name_for

    name = table_name_for(params)
    table = open_table(connect(settings), name)
    version = published_version(table, params.index.publish_tag) if table is not None else None
    if version is None:
        raise NothingToDo("no published knowledge-base index yet: the answer path has nothing to retrieve from")
    return f"{name}@v{version}"


def candidate_identity(params: Params, dataset: dict[str, Any], warm_from: int | None,
                       pairs_fingerprint: str | None = None) -> str:
    """The candidate key of a training: data version, pinned KB version, training params hash, base model and the
    registered prompt version (a new template is a new candidate); a warm start also depends on the champion
    version it starts from (``+warm:v<N>`` on the data identity), so the same data warm-started, or started from
    another champion, is another candidate than a cold start. With the DPO stage on, the preference pairs and the
    ``dpo`` params are part of it too (``+dpo:<hash>``): new feedback makes a new candidate."""
    from evertune.config import training_params_hash
    from evertune.tuning.prompt_registry import ensure_registered
    from evertune.tuning.registry import candidate_key

    data_identity = dataset["data_version"] + (f"+warm:v{warm_from}" if warm_from is not None else "")
    if pairs_fingerprint is not None:
        data_identity += f"+dpo:{params.section_hash('dpo')}:{pairs_fingerprint[:16]}"
    return candidate_key(data_identity, dataset["kb_version"], training_params_hash(params),
                         params.base_model.name_or_path, ensure_registered(params).uri)


def _warm_start(params: Params, settings: Settings) -> tuple[dict[str, Any] | None, Path | None]:
    """``(champion reference, its adapter folder)`` for a warm start; ``(None, None)`` when
    ``train.warm_start_from_champion`` is off, there is no champion, it was trained on a since-deleted document
    (tagged ``deleted_docs``), or it has no adapter or data to replay (then the training starts cold, with a
    warning)."""
    from evertune.tuning.registry import download_champion_adapter

    reference = _champion_reference(params, settings) if params.train.warm_start_from_champion else None
    if reference is None:
        return None, None
    if reference["carries_deleted_docs"]:  # its adapter holds them: continuing it would carry them on
        log.warning("warm start asked, but champion v%s was trained on deleted documents: cold start",
                    reference["version"])
        return None, None
    folder = settings.work_dir / "tune" / "champions" / f"v{reference['version']}-adapter"
    adapter = download_champion_adapter(params.registry.model_name, folder, settings=settings)
    if adapter is None or not reference.get("data_git_rev") or not reference.get("data_folder"):
        log.warning("warm start asked, but champion v%s has no adapter or no recorded training data: cold start",
                    reference["version"])
        return None, None
    return reference, adapter


def _has_rows(path: Path) -> bool:
    """Whether a JSON-lines file exists and holds a non-blank line."""
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as handle:
        return any(line.strip() for line in handle)


def _replay_set(settings: Settings, dataset: dict[str, Any], reference: dict[str, Any],
                output_dir: Path) -> tuple[Path, dict[str, int]]:
    """The champion's training rows that may be replayed, written to ``output_dir/replay.jsonl``: its train set
    (restored from DVC) less every golden QA item carried to ``as_of`` (ids and questions any golden drop held),
    less the rows about documents deleted up to ``as_of`` and less the rows superseded by the new dataset
    (:func:`evertune.tuning.train_data.filter_replay`)."""
    from evertune.kb.golden import QA
    from evertune.kb.golden_carry import carried_golden
    from evertune.tuning.history import collect_deleted_doc_ids, current_documents, select_interval_dirs
    from evertune.tuning.train_data import filter_replay, read_jsonl, write_jsonl

    golden = carried_golden(settings.data_repo / "validated", dataset["as_of"], QA)
    history = select_interval_dirs(settings.data_repo / "validated", dataset["as_of"], None)
    frozen = snapshot.read_records(dataset["path"], snapshot.GOLDEN_QA)
    folder = Path(dataset["path"])
    new_rows = read_jsonl(folder / "train.jsonl")
    if _has_rows(folder / "validation.jsonl"):
        new_rows += read_jsonl(folder / "validation.jsonl")
    kept, counts = filter_replay(
        read_jsonl(_restore_reference(settings, reference) / "train.jsonl"), new_rows,
        golden_ids={*golden.seen_ids, *(str(item["qa_id"]) for item in frozen)},
        golden_questions={*golden.seen_texts, *(item["question"] for item in frozen)},
        deleted_doc_ids=collect_deleted_doc_ids(history, current_documents(history)),
    )  # fmt: skip
    log.info("replay from champion v%s: %d of %d rows kept (%d golden, %d of deleted documents, %d superseded by "
             "new rows)", reference["version"], counts["replay_kept"], counts["replay_rows"],
             counts["replay_dropped_golden"], counts["replay_dropped_deleted_doc"], counts["replay_dropped_superseded"])
    return write_jsonl(output_dir / "replay.jsonl", kept), counts


def train_candidate(
    dataset: dict[str, Any], drift: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on the dataset, unless this exact candidate is already registered.

    With ``train.warm_start_from_champion`` (and a champion with an adapter and recorded training data), training
    continues the champion's adapter and replays ``train.replay_fraction`` of the mix from the champion's
    training rows, filtered by :func:`_replay_set`; the run is tagged ``warm_start_from`` (``v<N>``),
    ``warm_start_data_version`` and the replay counts.

    Returns:
        ``TrainResult.to_dict()`` (with ``cost``: device-seconds, tokens, peak memory, estimated cost and the
        projection), plus ``candidate_key``, ``kb_version`` (the dataset's pinned KB version) and ``warm_start``
        (``None``, or ``{"from_version", "data_version", "replay": counts}``). With ``dpo.enabled``, ``dpo``
        (``{"skipped": reason}`` or ``{"n_pairs", "metrics"}``), and after a DPO stage ``adapter_dir``/``merged_dir``
        name the DPO output (the SFT ones move to ``sft_adapter_dir``/``sft_merged_dir``).

    Raises:
        NothingToDo: A registered version has the same candidate key.
        BudgetExceeded: The projected tokens or time exceed the ``cost`` budget (refused before the model loads;
            the tuning run is tagged ``budget_refused``).
    """
    from evertune.tuning.registry import find_candidate
    from evertune.tuning.train import train_adapter

    params, settings = _context(overrides)
    kb_version = dataset["kb_version"]  # the version the training contexts came from, pinned by build_dataset
    reference, adapter = _warm_start(params, settings)
    preferences = _preferences(dataset, params, settings)
    key = candidate_identity(params, dataset, reference["version"] if reference else None,
                             preferences[0].fingerprint() if preferences else None)
    existing = find_candidate(params.registry.model_name, key, settings=settings)
    if existing is not None:
        raise NothingToDo(f"candidate {key[:12]} (same data, KB, params and base model) is already version "
                          f"{existing.version}: nothing new to train")
    folder = Path(dataset["path"])
    output_dir = settings.work_dir / "tune" / key[:16]
    replay, warm, tags = None, None, {}
    if reference is not None:
        replay, counts = _replay_set(settings, dataset, reference, output_dir)
        warm = {"from_version": reference["version"], "data_version": reference["data_version"], "replay": counts}
        tags = {"warm_start_from": f"v{reference['version']}",
                "warm_start_data_version": str(reference["data_version"]),
                **{key_: str(value) for key_, value in counts.items()}}
    # A small window may leave no validation row: then there is no eval loss (an empty file is not an error).
    validation = folder / "validation.jsonl" if _has_rows(folder / "validation.jsonl") else None
    result = train_adapter(
        folder / "train.jsonl", validation, params, settings,
        output_dir=output_dir, warm_start_adapter=adapter, replay_path=replay,
        mlflow_run_id=drift["run_id"], data_version=dataset["data_version"], kb_version=kb_version, tags=tags,
    )
    trained = _after_sft(result.to_dict(), preferences, params, settings)
    return {**trained, "candidate_key": key, "kb_version": kb_version, "warm_start": warm}


def _preferences(dataset: dict[str, Any], params: Params, settings: Settings) -> tuple[Any, Any] | None:
    """``(PreferenceSet, FeedbackBatch)`` of the window's feedback when ``dpo.enabled`` (it closes the window's
    feedback partitions: :mod:`evertune.kb.feedback`), else ``None``."""
    if not params.dpo.enabled:
        return None
    from evertune.tuning.preferences import window_preferences

    preferences, feedback = window_preferences(dataset, params, settings)
    log.info("feedback: %s; preference pairs: %s", feedback.counts, preferences.counts)
    return preferences, feedback


def _after_sft(trained: dict[str, Any], preferences: tuple[Any, Any] | None, params: Params,
               settings: Settings) -> dict[str, Any]:
    """The optional DPO stage (``dpo.enabled``): preference pairs of the window's feedback train the SFT adapter
    further (:func:`evertune.tuning.dpo.dpo_stage`); the result then names the DPO adapter and merged model."""
    if preferences is None:
        return trained
    from evertune.tuning.dpo import dpo_stage
    from evertune.tuning.preferences import write_pairs
    from evertune.tuning.tracking import configure_mlflow

    pairs, feedback = preferences
    write_pairs(pairs.pairs, Path(trained["output_dir"]) / "dpo" / "pairs.jsonl")
    client = configure_mlflow(params, settings)[0] if trained.get("run_id") else None
    if client is not None:
        client.log_dict(trained["run_id"], {"feedback": feedback.counts, "pairs": pairs.counts,
                                            "quarantine": [r.to_dict() for r in feedback.quarantine]},
                        "dpo/feedback.json")
    return dpo_stage(trained, pairs.pairs, params, client=client, run_id=trained.get("run_id"))
