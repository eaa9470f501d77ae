"""The companion commands (inspect, eval, bench, compare, init, run --summary-md) on real files.

One tiny trained MLP (state_dict + factory), its ONNX export (mcomp.model.convert.torch_to_onnx) and
a dynamic int8 version (onnxruntime.quantization.quantize_dynamic), built once per module; every
command runs in a real subprocess so exit codes, stdout and stderr are the ones a shell sees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from mcomp.model.convert import torch_to_onnx
from mcomp.model.state import ModelState
from mcomp.recipe.schema import InputSpec
from tests.helpers import write_mlp_project

FACTORY = ["--factory", "tinymodels:mlp"]
LAYER_MACS = [16 * 32, 32 * 32, 32 * 4]  # the MLP's Linear layers, one sample
PARAMS = 16 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4  # 1732


def _export(module: torch.nn.Module, features: int, path: Path) -> None:
    state = ModelState.from_torch(module.eval(), [InputSpec(name="x", shape=[features])])
    onnx.save(torch_to_onnx(state), str(path))


def _embedding_onnx(path: Path) -> None:
    """A model with an int64 input, so bench must feed integers (zeros):

    ids (N, 4) int64 ──Gather(table 10×3)──> (N, 4, 3) ──ReduceSum(axis 1)──> out (N, 3)
    """
    table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "table")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["emb"]),
            helper.make_node("ReduceSum", ["emb", "axes"], ["out"], keepdims=0),
        ],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
        [table, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _narrow_onnx(path: Path) -> None:
    """A classifier of 5 features, so its signature differs from the MLP's 16:

    x (N, 5) ──Gemm(W 4×5, transB)──> out (N, 4)
    """
    weight = numpy_helper.from_array(np.ones((4, 5), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["out"], transB=1)],
        "narrow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """mlp.pt + tinymodels.py, train/eval.npz, mlp.onnx, mlp_int8.onnx, narrow.onnx (5 inputs),
    embedding.onnx (int64 input), unknown_op.onnx (an op onnxruntime has no kernel for), and
    the ONNX file saved under a torch name."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("companion")
    write_mlp_project(folder)
    sys.path.insert(0, str(folder))
    try:
        import tinymodels

        mlp = tinymodels.mlp()
        mlp.load_state_dict(torch.load(folder / "mlp.pt", weights_only=True))
        _export(mlp, 16, folder / "mlp.onnx")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("tinymodels", None)
    # 7-bit weights: onnxruntime's AVX2 kernel (no VNNI) adds pairs of u8*s8 products in 16
    # bits and saturates with full int8 weights (max |diff| 2.5 on this MLP); VNNI CPUs agree
    quantize_dynamic(
        str(folder / "mlp.onnx"),
        str(folder / "mlp_int8.onnx"),
        weight_type=QuantType.QInt8,
        reduce_range=True,
    )
    (folder / "onnx_named.pt").write_bytes((folder / "mlp.onnx").read_bytes())
    (folder / "garbage.onnx").write_bytes(b"this is not a model\n" * 10)
    _embedding_onnx(folder / "embedding.onnx")
    _narrow_onnx(folder / "narrow.onnx")
    unknown = onnx.load(str(folder / "mlp.onnx"))  # valid for onnx.checker, not for onnxruntime
    unknown.graph.node[0].domain = "my.ops"
    unknown.opset_import.append(helper.make_opsetid("my.ops", 1))
    onnx.save(unknown, str(folder / "unknown_op.onnx"))
    return folder


def _json(result) -> dict:
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _one_line_error(result, expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcomp: error:"), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_fp32_and_int8_onnx(project, run_mcomp):
    fp32 = _json(run_mcomp("inspect", "mlp.onnx", "--json", cwd=project))
    int8 = _json(run_mcomp("inspect", "mlp_int8.onnx", "--json", cwd=project))

    assert [row["type"] for row in fp32["layers"]] == ["Gemm"] * 3
    assert [row["macs"] for row in fp32["layers"]] == LAYER_MACS
    assert fp32["totals"] == {
        "params": PARAMS,
        "nonzero": PARAMS,
        "sparsity": 0.0,
        "macs": sum(LAYER_MACS),
        "int8_layers": 0,
    }
    quantized = [row for row in int8["layers"] if row["dtype"] == "int8"]
    assert [row["type"] for row in quantized] == ["MatMulInteger"] * 3
    assert [row["shape"] for row in quantized] == [[16, 32], [32, 32], [32, 4]]
    assert int8["totals"]["macs"] == sum(LAYER_MACS)
    assert int8["totals"]["params"] == PARAMS  # int8 weights + float biases (Add nodes)


def test_inspect_state_dict_needs_factory_and_shape_for_macs(project, run_mcomp):
    table = run_mcomp(
        "inspect", "mlp.pt", *FACTORY, "--python-path", ".", "--input-shape", "16", cwd=project
    )
    assert table.returncode == 0, table.stderr
    assert "Linear" in table.stdout and "1,732" in table.stdout

    with_shape = _json(
        run_mcomp(
            "inspect",
            "mlp.pt",
            *FACTORY,
            "--python-path",
            ".",
            "--input-shape",
            "16",
            "--json",
            cwd=project,
        )
    )
    assert [(r["name"], r["macs"]) for r in with_shape["layers"]] == list(
        zip(["0", "2", "4"], LAYER_MACS, strict=True)
    )
    no_shape = run_mcomp("inspect", "mlp.pt", *FACTORY, "--python-path", ".", "--json", cwd=project)
    assert json.loads(no_shape.stdout)["totals"]["macs"] is None
    assert "--input-shape" in no_shape.stderr
    _one_line_error(run_mcomp("inspect", "mlp.pt", cwd=project), "--factory")


def test_model_format_comes_from_content_not_extension(project, run_mcomp):
    result = _json(run_mcomp("inspect", "onnx_named.pt", "--json", cwd=project))
    assert result["format"] == "onnx" and result["totals"]["params"] == PARAMS


# --- eval ------------------------------------------------------------------------------------


def test_eval_onnx_torch_and_int8(project, run_mcomp):
    onnx_acc = _json(run_mcomp("eval", "mlp.onnx", "--data", "eval.npz", "--json", cwd=project))
    torch_acc = _json(
        run_mcomp(
            "eval",
            "mlp.pt",
            *FACTORY,
            "--python-path",
            ".",
            "--data",
            "eval.npz",
            "--json",
            cwd=project,
        )
    )
    int8_acc = _json(
        run_mcomp("eval", "mlp_int8.onnx", "--data", "eval.npz", "--json", cwd=project)
    )

    assert onnx_acc["metric_name"] == "accuracy" and onnx_acc["samples"] == 128
    assert onnx_acc["metric"] == torch_acc["metric"] >= 0.9
    assert torch_acc["model_kind"] == "torch"
    assert abs(int8_acc["metric"] - onnx_acc["metric"]) <= 0.05


def test_eval_named_arrays_and_mse(project, run_mcomp):
    data = np.load(project / "eval.npz")
    np.savez(project / "named.npz", pixels=data["x"], target=data["y"])
    by_name = _json(
        run_mcomp(
            "eval",
            "mlp.onnx",
            "--data",
            "named.npz",
            "--inputs",
            "pixels",
            "--labels",
            "target",
            "--json",
            cwd=project,
        )
    )
    default = _json(run_mcomp("eval", "mlp.onnx", "--data", "eval.npz", "--json", cwd=project))
    assert by_name["metric"] == default["metric"]
    targets = np.zeros((len(data["x"]), 4), dtype=np.float32)
    np.savez(project / "regress.npz", x=data["x"], y=targets)
    mse = _json(
        run_mcomp(
            "eval", "mlp.onnx", "--data", "regress.npz", "--metric", "mse", "--json", cwd=project
        )
    )
    assert mse["metric_name"] == "mse" and mse["metric"] > 0


def test_eval_and_compare_pick_the_metric_from_the_labels(project, run_mcomp):
    data = np.load(project / "eval.npz")
    targets = np.linspace(-1, 1, len(data["x"]) * 4, dtype=np.float32).reshape(-1, 4)
    np.savez(project / "float_labels.npz", x=data["x"], y=targets)
    chosen = _json(
        run_mcomp("eval", "mlp.onnx", "--data", "float_labels.npz", "--json", cwd=project)
    )
    assert chosen["metric_name"] == "mse" and chosen["metric_chosen"] == "auto"
    assert chosen["metric"] > 0  # not accuracy 0.0000 against float targets
    integer = _json(run_mcomp("eval", "mlp.onnx", "--data", "eval.npz", "--json", cwd=project))
    assert integer["metric_name"] == "accuracy" and integer["metric"] >= 0.9
    args = ["mlp.onnx", "mlp_int8.onnx", "--rounds", "1", "--runs", "2", "--json"]
    compared = _json(run_mcomp("compare", *args, "--data", "float_labels.npz", cwd=project))
    assert compared["metric_name"] == "mse" and compared["figures"]["metric"]["a"] > 0
    assert 0.9 < compared["agreement"]["cosine"] <= 1.0 + 1e-9


# --- bench -----------------------------------------------------------------------------------


def test_bench_latency_throughput_memory(project, run_mcomp):
    result = _json(
        run_mcomp(
            "bench",
            "mlp_int8.onnx",
            "--batch",
            "1",
            "--batch",
            "8",
            "--warmup",
            "1",
            "--runs",
            "5",
            "--json",
            cwd=project,
        )
    )
    assert [b["batch"] for b in result["batches"]] == [1, 8]
    for row in result["batches"]:
        assert 0 < row["p50_ms"] <= row["p90_ms"]
        assert row["mean_ms"] > 0
        # p50_ms is rounded to 0.1 µs in the JSON; throughput comes from the exact median
        assert row["throughput_per_s"] == pytest.approx(
            row["batch"] * 1000 / row["p50_ms"], rel=0.05
        )
    assert result["threads"] == 1 and isinstance(result["cpu_isa"], list)
    assert result["memory"]["session_peak_bytes"] > 0


def test_bench_profile_splits_kernel_time_by_op_and_counts_int8_kernels(project, run_mcomp):
    int8 = _json(
        run_mcomp(
            "bench",
            "mlp_int8.onnx",
            "--batch",
            "1",
            "--batch",
            "8",
            "--runs",
            "3",
            "--profile",
            "--json",
            cwd=project,
        )
    )["profile"]
    assert int8["batch"] == 8 and int8["kernel_ms"] > 0
    assert sum(row["share"] for row in int8["ops"]) == pytest.approx(1.0, abs=0.01)
    assert [row["ms"] for row in int8["ops"]] == sorted(
        (row["ms"] for row in int8["ops"]), reverse=True
    )
    quantized = {row["op"] for row in int8["ops"] if row["quantized"]}
    assert quantized and 0 < int8["quantized_kernel_share"] <= 1
    assert all(
        op.startswith(("QLinear", "QGemm", "MatMulInteger", "DynamicQuantizeMatMul"))
        for op in quantized
    )
    fp32 = _json(run_mcomp("bench", "mlp.onnx", "--runs", "3", "--profile", "--json", cwd=project))[
        "profile"
    ]
    assert fp32["quantized_kernel_share"] == 0 and fp32["ops"]
    table = run_mcomp("bench", "mlp_int8.onnx", "--runs", "2", "--profile", cwd=project)
    assert table.returncode == 0 and "kernel time per op type at batch 32" in table.stdout


def test_bench_feeds_integer_inputs_and_renders_a_table(project, run_mcomp):
    result = _json(run_mcomp("bench", "embedding.onnx", "--runs", "2", "--json", cwd=project))
    assert result["inputs"] == [{"name": "ids", "shape": [4], "dtype": "int64"}]
    assert result["inputs_from"] == "random (integer inputs: zeros)"
    table = run_mcomp("bench", "mlp.onnx", "--runs", "2", cwd=project)
    assert table.returncode == 0 and "samples/s" in table.stdout and "peak memory" in table.stdout


def test_bench_times_on_the_data_given(project, run_mcomp):
    from mcomp.data.open import load_split
    from mcomp.model.open import ModelRef, open_model
    from mcomp.tools.bench import _feeds

    ids = np.arange(12, dtype=np.int64).reshape(3, 4) % 10
    np.savez(project / "tokens.npz", token_ids=ids)
    args = ["embedding.onnx", "--data", "tokens.npz", "--inputs", "token_ids"]
    result = _json(run_mcomp("bench", *args, "--batch", "5", "--runs", "2", "--json", cwd=project))
    assert result["inputs_from"] == "tokens.npz" and result["batches"][0]["batch"] == 5
    # the feed is the file's samples, repeated up to the batch: not zeros
    state = open_model(ModelRef(project / "embedding.onnx"))
    feed = _feeds(state, [5], load_split(str(project / "tokens.npz"), inputs=["token_ids"]), 1)
    np.testing.assert_array_equal(feed[5]["ids"], np.concatenate([ids, ids])[:5])
    missing = run_mcomp("bench", "embedding.onnx", "--data", "tokens.npz", cwd=project)
    assert missing.returncode == 2 and "x" in missing.stderr  # no array named x: --inputs


# --- compare ---------------------------------------------------------------------------------


def test_compare_fp32_with_int8(project, run_mcomp):
    result = _json(
        run_mcomp(
            "compare",
            "mlp.onnx",
            "mlp_int8.onnx",
            "--data",
            "eval.npz",
            "--rounds",
            "2",
            "--runs",
            "3",
            "--json",
            cwd=project,
        )
    )
    figures = result["figures"]
    assert figures["size_bytes"]["ratio_b_over_a"] < 1
    assert figures["size_compressed_bytes"]["b"] < figures["size_compressed_bytes"]["a"]
    assert figures["macs"] == {"a": sum(LAYER_MACS), "b": sum(LAYER_MACS), "ratio_b_over_a": 1.0}
    assert figures["latency_ms_b1"]["a"] > 0 and figures["latency_ms_b1"]["b"] > 0
    assert figures["metric"]["a"] >= 0.9 and result["metric_name"] == "accuracy"
    agreement = result["agreement"]
    assert agreement["top1_agreement"] >= 0.9
    assert 0 < agreement["mean_abs_diff"] <= agreement["max_abs_diff"] < 1.0


def test_compare_torch_with_its_onnx_export_without_data(project, run_mcomp):
    result = _json(
        run_mcomp(
            "compare",
            "mlp.pt",
            "mlp.onnx",
            *FACTORY,
            "--python-path",
            ".",
            "--input-shape",
            "16",
            "--rounds",
            "1",
            "--runs",
            "2",
            "--json",
            cwd=project,
        )
    )
    assert result["samples"] == "64 random" and "metric" not in result["figures"]
    assert result["agreement"]["max_abs_diff"] < 1e-4
    assert result["agreement"]["top1_agreement"] == 1.0
    assert result["figures"]["params"]["ratio_b_over_a"] == 1.0


def test_compare_prints_a_table(project, run_mcomp):
    result = run_mcomp(
        "compare", "mlp.onnx", "mlp_int8.onnx", "--rounds", "1", "--runs", "2", cwd=project
    )
    assert result.returncode == 0, result.stderr
    assert "size_bytes" in result.stdout and "top-1 agreement" in result.stdout


# --- bad input: exit 2, one line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["compare", "mlp.onnx", "narrow.onnx"], "different inputs"),
        (["inspect", "missing.onnx"], "file not found"),
        (["inspect", "garbage.onnx"], "not a model file"),
        (["inspect", "."], "is a directory"),
        (["bench", "mlp.pt"], "bench times ONNX models"),
        (["bench", "unknown_op.onnx"], "onnxruntime cannot load unknown_op.onnx"),
        (["compare", "mlp.onnx", "unknown_op.onnx"], "onnxruntime cannot load"),
        (["eval", "unknown_op.onnx", "--data", "eval.npz"], "onnxruntime cannot load"),
        (
            ["eval", "mlp.onnx", "--data", "narrow.npz"],
            "--data: array 'x' has samples of shape (5,)",
        ),
        (["eval", "mlp.onnx", "--data", "eval.npz", "--labels", "nope"], "no array(s) ['nope']"),
        (["eval", "mlp.onnx", "--data", "garbage.onnx"], "not a readable .npz"),
        (
            ["inspect", "mlp.pt", *FACTORY, "--python-path", ".", "--input-shape", "1,a"],
            "--input-shape",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(project, run_mcomp, args, expected):
    np.savez(project / "narrow.npz", x=np.zeros((8, 5), np.float32), y=np.zeros(8, np.int64))
    _one_line_error(run_mcomp(*args, cwd=project), expected)


# --- init ------------------------------------------------------------------------------------


def test_init_writes_a_recipe_validate_accepts(tmp_path, project, run_mcomp):
    first = run_mcomp("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    text = (tmp_path / "recipe.yaml").read_text()
    assert "builtin: digits_cnn" in text and text.count("#") > 10  # a commented starter
    assert run_mcomp("validate", "recipe.yaml", cwd=tmp_path).returncode == 0

    _one_line_error(run_mcomp("init", cwd=tmp_path), "--force")
    assert (tmp_path / "recipe.yaml").read_text() == text
    assert run_mcomp("init", "--force", "--task", "regression", cwd=tmp_path).returncode == 0
    regression = (tmp_path / "recipe.yaml").read_text()
    assert "task: regression" in regression and "max_relative_drop: 5%" in regression
    assert run_mcomp("validate", "recipe.yaml", cwd=tmp_path).returncode == 0

    args = ["--model", str(project / "mlp.pt"), *FACTORY, "--data", str(project / "train.npz")]
    shared = run_mcomp("init", *args, "--out", "sub/torch.yaml", cwd=tmp_path)
    assert shared.returncode == 0 and "is both the train and the eval split" in shared.stderr
    assert (
        "# the train file: replace it with held-out data"
        in (tmp_path / "sub/torch.yaml").read_text()
    )
    held_out = run_mcomp(
        "init", *args, "--eval-data", str(project / "eval.npz"), "--out", "h.yaml", cwd=tmp_path
    )
    assert held_out.returncode == 0 and "warning" not in held_out.stderr
    text = (tmp_path / "h.yaml").read_text()
    eval_line = next(line for line in text.splitlines() if line.strip().startswith("eval:"))
    assert eval_line.strip().endswith("/eval.npz")  # the held-out file, no warning comment
    checked = _json(run_mcomp("validate", "sub/torch.yaml", "--json", cwd=tmp_path))
    assert checked["stages"] == ["prune", "finetune", "quantize", "export"]
    assert (
        run_mcomp(
            "init", "--model", str(project / "onnx_named.pt"), "--out", "onnx.yaml", cwd=tmp_path
        ).returncode
        == 0
    )
    checked = _json(run_mcomp("validate", "onnx.yaml", "--json", cwd=tmp_path))
    assert checked["stages"] == ["quantize", "export"]


# --- run --summary-md and provenance ---------------------------------------------------------


def test_run_writes_summary_md_step_summary_and_provenance(project, run_mcomp, monkeypatch):
    (project / "run.yaml").write_text(
        'version: 1\nmodel: {path: mlp.pt, factory: "tinymodels:mlp", python_path: ["."]}\n'
        "data: {eval: eval.npz}\nruntime: {threads: 1, latency: {runs: 2, warmup: 1, batch: 4}}\n"
        "stages:\n  - prune: {sparsity: 0.5}\n"
        "constraints: {max_accuracy_drop: 0.5, min_compression: 100}\n"
    )
    step_summary = project / "step_summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))

    result = run_mcomp(
        "run", "run.yaml", "--out", "run-out", "--summary-md", "summary.md", "-q", cwd=project
    )

    assert result.returncode == 1, result.stderr  # min_compression 100 is broken on purpose
    summary = (project / "summary.md").read_text()
    assert summary.startswith("### mcomp: LIMITS BROKEN")
    assert "| baseline | 1,732 | 0% |" in summary and "| prune | 1,732 | 48% |" in summary
    assert "| max_accuracy_drop |" in summary and "| 0.5 | ok |" in summary
    assert "| min_compression |" in summary and "**BROKEN**" in summary
    assert step_summary.read_text() == "earlier step\n" + summary + "\n"
    provenance = json.loads((project / "run-out" / "provenance.json").read_text())
    assert provenance["argv"] == [
        "mcomp",
        "run",
        "run.yaml",
        "--out",
        "run-out",
        "--summary-md",
        "summary.md",
        "-q",
    ]
    assert provenance["artifacts"]["model"] == "run-out/model.onnx"


@pytest.mark.parametrize(
    "command", ["inspect", "eval", "bench", "compare", "init", "report", "recipes"]
)
def test_every_command_help_has_an_example(run_mcomp, command):
    result = run_mcomp(command, "--help")
    assert result.returncode == 0 and "Example" in result.stdout and "--json" in result.stdout
