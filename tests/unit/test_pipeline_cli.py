"""``evertune refresh|tune``: choices from the registry, receipts, skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evertune import pipeline, pipeline_cli
from evertune.cli import build_parser, main
from evertune.errors import NothingToDo
from evertune.pipeline import REFRESH, TUNE, Step

CALLS: list[tuple[str, dict]] = []


def first(interval, overrides=None):
    CALLS.append(("first", {"interval": interval}))
    return {"n": 1, "interval": interval}


def second(interval, got):
    CALLS.append(("second", got))
    if got.get("n") == 0:
        raise NothingToDo("empty drop")
    return {"n": got["n"] + 1}


def third(interval, got, more):
    CALLS.append(("third", {"got": got, "more": more}))
    return {"n": got["n"] + more["n"]}


def nothing(as_of=None, overrides=None):
    raise NothingToDo("no validated data versioned: nothing to tune on")


FAKE_STEPS = (
    Step(REFRESH, "one", "fake_one", f"{__name__}:first", "got"),
    Step(REFRESH, "two", "fake_two", f"{__name__}:second", "more", ("one",)),
    Step(REFRESH, "three", "fake_three", f"{__name__}:third", "last", ("one", "two")),
)


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch, evertune_home: Path) -> Path:
    monkeypatch.setattr(pipeline, "STEPS", FAKE_STEPS)
    CALLS.clear()
    return evertune_home / "work" / "receipts" / "refresh"


def receipt(folder: Path, day: str, name: str) -> dict:
    return json.loads((folder / f"ds={day}" / f"{name}.json").read_text())


def test_choices_and_order_come_from_the_registry() -> None:
    parser = build_parser()
    refresh = parser.parse_args(["refresh", "sync", "--interval", "2026-11-01"])
    assert refresh.step == "sync"
    assert pipeline_cli._names(REFRESH) == ("ingest", "validate", "version", "plan", "embed", "sync",
                                            "evaluate", "publish", "freshness", "deletions")
    assert pipeline_cli._names(TUNE) == ("dataset", "drift", "train", "evaluate", "gate", "register",
                                          "promote")
    assert parser.parse_args(["tune"]).step == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["refresh", "train", "--interval", "2026-11-01"])


def test_all_runs_in_order_and_writes_receipts(fake_registry: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["refresh", "all", "--interval", "2026-11-03"]) == 0
    assert [name for name, _ in CALLS] == ["first", "second", "third"]
    assert receipt(fake_registry, "2026-11-03", "three") == {"n": 3}
    assert capsys.readouterr().out.splitlines()[0] == 'one: {"interval": "2026-11-03", "n": 1}'


def test_several_intervals_run_in_the_order_given_and_the_first_skip_stops_the_rest(fake_registry: Path) -> None:
    assert main(["refresh", "all", "--interval", "2026-11-02", "2026-11-01"]) == 0
    assert [got["interval"] for name, got in CALLS if name == "first"] == ["2026-11-02", "2026-11-01"]
    assert receipt(fake_registry, "2026-11-01", "three") == receipt(fake_registry, "2026-11-02", "three") == {"n": 3}

    CALLS.clear()
    pipeline_cli.write_receipt(fake_registry / "ds=e" / "one.json", {"n": 0})
    pipeline_cli.write_receipt(fake_registry / "ds=f" / "one.json", {"n": 4})
    assert main(["refresh", "two", "--interval", "e", "f"]) == 2
    assert CALLS == [("second", {"n": 0})], "interval f must not run after e had nothing to do"
    assert not (fake_registry / "ds=f" / "two.json").exists()


def test_one_step_reads_its_upstream_receipts(fake_registry: Path) -> None:
    pipeline_cli.write_receipt(fake_registry / "ds=d" / "one.json", {"n": 10})
    pipeline_cli.write_receipt(fake_registry / "ds=d" / "two.json", {"n": 5})
    main(["refresh", "three", "--interval", "d"])
    assert CALLS == [("third", {"got": {"n": 10}, "more": {"n": 5}})]
    assert receipt(fake_registry, "d", "three") == {"n": 15}


def test_a_missing_upstream_receipt_is_nothing_to_do(fake_registry: Path) -> None:
    with pytest.raises(NothingToDo, match="no receipt of step 'one'"):
        pipeline_cli.run_steps(REFRESH, ["two"], "d", {"interval": "d"})
    assert CALLS == []


def test_nothing_to_do_leaves_skip_receipts_and_downstream_skips(
    fake_registry: Path, capsys: pytest.CaptureFixture
) -> None:
    pipeline_cli.write_receipt(fake_registry / "ds=d" / "one.json", {"n": 0})
    with pytest.raises(NothingToDo):
        pipeline_cli.run_steps(REFRESH, ["two", "three"], "d", {"interval": "d"})
    assert receipt(fake_registry, "d", "two") == {"skipped": "empty drop"}
    assert receipt(fake_registry, "d", "three") == {"skipped": "upstream step two was skipped"}
    assert main(["refresh", "three", "--interval", "d"]) == 2  # refresh: a skip is an error, as before
    assert [name for name, _ in CALLS] == ["second"]
    assert "upstream step two was skipped" in capsys.readouterr().err


def test_tune_reports_nothing_to_do_and_exits_zero(
    monkeypatch: pytest.MonkeyPatch, evertune_home: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(pipeline, "STEPS", (Step(TUNE, "dataset", "fake", f"{__name__}:nothing", "dataset"),))
    assert main(["tune", "--as-of", "2026-11-02"]) == 0
    assert "nothing to do: no validated data versioned" in capsys.readouterr().out
    skipped = evertune_home / "work" / "receipts" / "tune" / "as_of=2026-11-02" / "dataset.json"
    assert json.loads(skipped.read_text()) == {"skipped": "no validated data versioned: nothing to tune on"}
