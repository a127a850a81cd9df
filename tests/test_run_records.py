"""The run folder's typed records: round trips, and a torn or missing file says which file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from xai_bench.tracking.records import (
    Attempt,
    EvaluationSummary,
    MethodScores,
    MissingRecordError,
    RecordError,
    TrainingRecord,
    clear_error,
    read_error,
    read_plain_config,
    write_error,
)
from xai_bench.tracking.run_folder import run_of


def test_training_record_round_trip(tmp_path: Path) -> None:
    record = TrainingRecord(
        best_epoch=3,
        best_checkpoint="/r/checkpoints/best.ckpt",
        epochs_trained=5,
        world_size=1,
        test={"acc": 0.75, "loss": 0.5},
        val={"acc": 0.7},
        extra={"future_key": 1},
    )
    record.write(tmp_path)
    assert TrainingRecord.read(tmp_path) == record
    assert TrainingRecord.read(tmp_path).test_accuracy == 0.75


def test_training_record_without_test_writes_no_split(tmp_path: Path) -> None:
    TrainingRecord(best_epoch=None).write(tmp_path)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert "val" not in data and "test" not in data
    assert TrainingRecord.read(tmp_path).test_accuracy is None


def _summary() -> EvaluationSummary:
    stats = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10, "higher_is_better": True}
    return EvaluationSummary(
        classification={"accuracy": {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0, "n": 10}},
        counts={"images": 10},
        bootstrap={"samples": 10, "level": 0.95, "seed": 0},
        methods={
            "gradcam": MethodScores({"pointing_game": stats}, {"nan_maps": 0}),
            "random": MethodScores({"pointing_game": {**stats, "value": 0.2}}, {"nan_maps": 0}),
        },
        checkpoint="/r/checkpoints/best.ckpt",
        training_run="/r",
        split="roi",
        method="gradcam",
        baselines=["random"],
        world_size=1,
    )


def test_evaluation_summary_round_trip_and_typed_access(tmp_path: Path) -> None:
    summary = _summary()
    summary.write(tmp_path)
    read = EvaluationSummary.read(tmp_path)
    assert read == summary
    assert read.images == 10 and read.accuracy == 0.9
    scores = read.scores("gradcam")
    assert scores is not None and scores.value("pointing_game") == 0.5
    assert (
        scores.higher_is_better("pointing_game") is True
        and scores.higher_is_better("iou@5") is None
    )
    assert read.scores("chefer") is None


def test_evaluation_summary_writes_nan_as_null(tmp_path: Path) -> None:
    summary = _summary()
    summary.methods["gradcam"].metrics["pointing_game"]["ci_low"] = math.nan
    summary.write(tmp_path)
    assert (
        EvaluationSummary.read(tmp_path).methods["gradcam"].metrics["pointing_game"]["ci_low"]
        is None
    )


def test_a_missing_or_torn_record_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingRecordError, match="metrics.json does not exist"):
        EvaluationSummary.read(tmp_path)
    (tmp_path / "metrics.json").write_text('{"methods": {"gradcam": ')
    with pytest.raises(RecordError, match=r"metrics\.json is not complete JSON") as info:
        TrainingRecord.read(tmp_path)
    assert not isinstance(info.value, MissingRecordError)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RecordError, match="not an object"):
        EvaluationSummary.read(tmp_path)


def test_attempts_round_trip_and_skip_a_torn_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Attempt(attempt=1, started_at="2026-01-01T00:00:00+00:00", host="h", pid=1)
    second = Attempt(
        attempt=2, host="h", resumed_from={"epoch": 1}, extra={"skipped_checkpoints": {"a": "b"}}
    )
    first.write(tmp_path)
    second.write(tmp_path)
    assert Attempt.read(tmp_path) == [first, second]
    with (tmp_path / "jobs.jsonl").open("a") as handle:
        handle.write('{"attempt": 3, "ho')
    assert Attempt.read(tmp_path) == [first, second]
    assert "not a complete record" in caplog.text
    assert Attempt.read(tmp_path / "nowhere") == []


def test_error_file_is_written_read_and_cleared(tmp_path: Path) -> None:
    assert read_error(tmp_path) is None
    write_error(tmp_path, "Traceback\nValueError: boom\n")
    assert read_error(tmp_path) == "Traceback\nValueError: boom\n"
    clear_error(tmp_path)
    clear_error(tmp_path)  # nothing to remove: fine
    assert read_error(tmp_path) is None


def test_plain_config_is_never_resolved(tmp_path: Path) -> None:
    assert read_plain_config(tmp_path) == {}
    (tmp_path / "config.yaml").write_text("task_name: '${oc.env:HOME}'\n")
    assert read_plain_config(tmp_path) == {"task_name": "${oc.env:HOME}"}
    (tmp_path / "config.yaml").write_text("[unclosed")
    assert read_plain_config(tmp_path) is None


def test_run_of_a_checkpoint() -> None:
    assert run_of(Path("/runs/a/checkpoints/best.ckpt")) == Path("/runs/a")


def test_metrics_declare_which_direction_is_better() -> None:
    from xai_bench.metrics import build_metric

    assert build_metric("aopc", key="aopc").column_higher_is_better("aopc@56") is True
    assert (
        build_metric("aopc", key="aopc_lerf", order="lerf").column_higher_is_better("aopc_lerf@56")
        is False
    )
    assert (
        build_metric("aopc", key="aopc_random", order="random").column_higher_is_better(
            "aopc_random@56"
        )
        is None
    )
    di = build_metric("deletion_insertion")
    assert di.column_higher_is_better("deletion_insertion/deletion") is False
    assert di.column_higher_is_better("deletion_insertion/insertion") is True
    assert build_metric("max_sensitivity").higher_is_better is False
    assert build_metric("pointing_game").higher_is_better is True
    assert build_metric("haas").column_higher_is_better("haas/accuracy") is True


def test_the_report_reads_the_declared_direction() -> None:
    from xai_bench.report.study import StudyTable

    table = StudyTable(
        rows=[],
        methods=[],
        baselines=[],
        metrics=[],
        cells={},
        higher_is_better={"odd_metric": False, "aopc_lerf@16": True},
    )
    assert table.lower_is_better("odd_metric")  # declared, whatever the name says
    assert not table.lower_is_better("aopc_lerf@16")
    assert table.lower_is_better("max_sensitivity@0.05")  # not declared: guessed from the name
