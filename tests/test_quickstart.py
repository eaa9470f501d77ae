"""The quickstart end to end through a real subprocess: report, artifacts, limits, determinism."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import FAST
from tests.helpers import without_timings

REPORT_METRICS = {
    "params",
    "nonzero_params",
    "sparsity",
    "size_bytes",
    "size_compressed_bytes",
    "macs",
    "metric_name",
    "metric",
    "latency_ms_b1",
    "latency_ms_batch",
}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quickstart")
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcomp",
            "run",
            "quickstart",
            "--json",
            "--report",
            "r.json",
            "--plot",
            "stages.png",
            *FAST,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MCOMP_THREADS": "1"},
    )
    return folder, result


def test_quickstart_exits_0_and_stdout_is_only_the_json_report(quickstart):
    folder, result = quickstart
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # nothing else may reach stdout
    assert report == json.loads((folder / "r.json").read_text())
    assert "stage 1/4: prune" in result.stderr


def test_report_has_the_documented_schema(quickstart):
    folder, result = quickstart
    report = json.loads(result.stdout)
    for key in (
        "mcomp_version",
        "recipe",
        "baseline",
        "stages",
        "final",
        "constraints",
        "artifacts",
    ):
        assert key in report
    assert [s["type"] for s in report["stages"]] == ["prune", "finetune", "quantize", "export"]
    for entry in [report["baseline"], *report["stages"]]:
        assert {"name", "type", "seconds", "metrics"} <= set(entry)
        assert set(entry["metrics"]) >= REPORT_METRICS
    assert {c["name"] for c in report["constraints"]} == {"max_accuracy_drop", "min_compression"}
    # latency: every model timed side by side at the end, medians with their spread
    timing = report["latency"]
    assert timing["enabled"] and timing["rounds"] == 15 and timing["models_timed"] == 4
    assert {"load_before", "load_after", "own_cpu_s", "others_share"} <= set(timing["machine"])
    for entry in [report["baseline"], *report["stages"]]:
        for label in ("b1", "batch"):
            figures = entry["metrics"]["latency"][label]
            assert len(figures["rounds_ms"]) == timing["rounds"]
            assert figures["min_ms"] <= figures["median_ms"] <= figures["max_ms"]
        assert entry["metrics"]["latency_ms_b1"] == entry["metrics"]["latency"]["b1"]["median_ms"]
    for entry in report["stages"]:
        ratio = entry["metrics"]["speedup"]["batch"]
        assert ratio["low"] <= ratio["value"] <= ratio["high"]
    # export does not change the quantized model: the same figures, timed once
    assert report["stages"][3]["metrics"]["latency"] == report["stages"][2]["metrics"]["latency"]
    assert all({"name", "limit", "value", "ok"} <= set(c) for c in report["constraints"])
    assert report["recipe"]["stages"][0]["prune"]["sparsity"] == 0.7  # resolved, with defaults
    assert report["recipe"]["stages"][1]["finetune"]["optimizer"] == "adam"


def test_quickstart_meets_its_targets(quickstart):
    folder, result = quickstart
    report = json.loads(result.stdout)
    base, final = report["baseline"]["metrics"], report["final"]["metrics"]
    assert base["metric_name"] == "accuracy" and base["metric"] > 0.95
    assert final["metric"] >= base["metric"] - 0.01
    assert base["size_compressed_bytes"] / final["size_compressed_bytes"] >= 4
    prune, finetune = report["stages"][0]["metrics"], report["stages"][1]["metrics"]
    assert prune["sparsity"] == pytest.approx(0.7 * 38_144 / 38_282, abs=0.01)
    assert finetune["nonzero_params"] == prune["nonzero_params"]
    assert report["ok"] is True and all(c["ok"] for c in report["constraints"])


def test_final_model_is_int8_and_runs_in_onnxruntime(quickstart):
    folder, _ = quickstart
    path = folder / "mcomp-out" / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 4 and ops["Conv"] == 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.zeros((3, 1, 8, 8), np.float32)
    assert session.run(None, {"x": x})[0].shape == (3, 10)
    for name in ("report.json", "recipe.resolved.yaml"):
        assert (folder / "mcomp-out" / name).is_file()
    assert (folder / "stages.png").read_bytes()[:4] == b"\x89PNG"  # mcomp run --plot
    assert not list((folder / "mcomp-out").glob(".*.tmp"))  # no temp files left behind


def test_same_recipe_gives_the_same_report_save_timings(quickstart, run_mcomp, tmp_path):
    folder, first = quickstart
    second = run_mcomp("run", "quickstart", "--json", *FAST, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]

    assert without_timings(json.loads(first.stdout)) == without_timings(json.loads(second.stdout))
    assert (folder / "mcomp-out" / "model.onnx").read_bytes() == (
        tmp_path / "mcomp-out" / "model.onnx"
    ).read_bytes()
