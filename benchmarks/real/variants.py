"""The int8 variants of one fp32 model, each made from the same fp32 ONNX graph and the
same calibration samples.

- plain onnxruntime (`onnxruntime.quantization`) after its recommended `quant_pre_process`
  (symbolic shape inference, falling back to `skip_symbolic_shape=True` when it fails):
  `quantize_static` with every option at its default; `quantize_static` U8S8 per-channel
  QDQ; `quantize_dynamic` per-channel.
- NNCF `nncf.quantize` (nncf_ptq.py), default, and for attention models TRANSFORMER.
- mcomp as a user runs it (`mcomp run recipe.yaml --out DIR --report FILE --quiet`):
  `quantize: {mode: auto}` and nothing else, and the same with a budget
  (`constraints.max_accuracy_drop` on a fidelity metric), which turns on the fallback.

onnxruntime's helpers write files into the current directory, so every call runs with a
temporary folder as its working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BUDGET_DROP = 0.01  # the budget variant's constraints.max_accuracy_drop


@contextlib.contextmanager
def working_directory(path: Path):
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over one input array, 8 samples a batch."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.batches = iter([{name: x[i : i + 8]} for i in range(0, len(x), 8)])

    def get_next(self):
        return next(self.batches, None)


def pre_process(source: Path, workdir: Path) -> tuple[Path, str]:
    """onnxruntime's quant_pre_process of `source`; returns the file and how it went."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = workdir / "preprocessed.onnx"
    with working_directory(workdir):
        try:
            quant_pre_process(str(source), str(target))
            return target, "quant_pre_process"
        except Exception as exc:  # noqa: BLE001 - any failure here has the documented fallback
            lines = str(exc).strip().splitlines()
            first = type(exc).__name__ + (f": {lines[-1][:160]}" if lines else "")
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target, f"quant_pre_process failed ({first}); skip_symbolic_shape=True"


def ort_variants(
    source: Path, name: str, calibration: np.ndarray, workdir: Path
) -> tuple[dict[str, Path], dict[str, float], str]:
    """The three plain onnxruntime int8 models; returns files, seconds per call, and how the
    pre-processing went."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    pre, how = pre_process(source, workdir)
    calls = {
        "ORT static (defaults)": lambda out: quantize_static(
            str(pre), str(out), _Reader(name, calibration)
        ),
        "ORT static U8S8 per-channel": lambda out: quantize_static(
            str(pre), str(out), _Reader(name, calibration), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
        ),
        "ORT dynamic per-channel": lambda out: quantize_dynamic(
            str(pre), str(out), per_channel=True
        ),
    }  # fmt: skip
    files, seconds = {}, {}
    for index, (label, call) in enumerate(calls.items()):
        out = workdir / f"ort_{index}.onnx"
        start = time.perf_counter()
        with working_directory(workdir):
            call(out)
        seconds[label], files[label] = time.perf_counter() - start, out
    return files, seconds, how


def loads(path: Path) -> str | None:
    """None when onnxruntime accepts the model, else its complaint."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the message is the finding
        return str(exc).strip()[:400]
    return None


def to_opset_13(source: Path, workdir: Path) -> Path:
    """`source` converted to opset 13 (onnx.version_converter), the first opset whose
    DequantizeLinear takes the `axis` per-channel scales need."""
    import onnx
    from onnx import version_converter

    target = workdir / f"{source.stem}-opset13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(source)), 13), str(target))
    return target


def input_name(path: Path) -> str:
    """The name of the ONNX model's one graph input that is not an initializer."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def mcomp_executable() -> list[str]:
    script = Path(sys.executable).with_name("mcomp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcomp"]


def model_block(model, source: Path) -> str:
    """The recipe's `model:` for an ONNX file, or a state dict with its factory."""
    if model.kind == "onnx":
        return f"  path: {source}\n"
    return (
        f"  path: {source}\n  factory: {model.factory}\n"
        f"  python_path: [{Path(__file__).parent}]\n"
        f"  inputs: [{{name: x, shape: {list(model.shape)}}}]\n"
    )


def write_recipe(model, source: Path, data: dict[str, Path], stage: str, path: Path, **kw):
    """A recipe as a user writes one from the README; `stage` is the one stage's YAML,
    `kw` adds `metric:` / `constraints:` lines."""
    extra = "".join(f"{key}: {value}\n" for key, value in kw.items())
    calibration = len(np.load(data["calibration"])["x"])
    path.write_text(
        "version: 1\nseed: 0\n"
        f"model:\n{model_block(model, source)}"
        # unlabelled .npz files: mcomp expects a `y` array unless told `labels: null`
        f"data:\n  calibration: {{path: {data['calibration']}, labels: null}}\n"
        f"  eval: {{path: {data['eval']}, labels: null}}\n"
        f"  calibration_samples: {calibration}\n  batch_size: 16\n"
        f"task: {model.task}\n{extra}"
        f"runtime:\n  threads: {data['threads']}\n"
        f"  latency: {{batch: {model.batch}, warmup: 2, runs: 10}}\n"
        f"stages:\n  - {stage}\n"
    )


def run_mcomp(recipe: Path, out: Path) -> dict:
    """`mcomp run` as a subprocess; returns the exit code, wall time, the report (when
    written) and the last lines of stderr."""
    report = out / "report.json"
    start = time.perf_counter()
    done = subprocess.run(
        [*mcomp_executable(), "run", str(recipe), "--out", str(out), "--report", str(report),
         "--quiet"],
        capture_output=True, text=True, cwd=recipe.parent,
    )  # fmt: skip
    return {
        "exit_code": done.returncode,
        "wall_seconds": time.perf_counter() - start,
        "report": json.loads(report.read_text()) if report.exists() else None,
        "stderr": done.stderr.strip()[-2000:],
        "model": out / "model.onnx",
    }


def mcomp_export(model, source: Path, data: dict, workdir: Path) -> dict:
    """The fp32 ONNX mcomp exports from a state dict (`stages: [export: {}]`)."""
    recipe = workdir / "export.yaml"
    write_recipe(model, source, data, "export: {}", recipe)
    return run_mcomp(recipe, workdir / "mcomp-export")


def mcomp_variants(
    model, source: Path, data: dict, workdir: Path, budget: bool = True
) -> dict[str, dict]:
    """mcomp's default (`quantize: {mode: auto}`) and, with `budget`, the same with
    `constraints.max_accuracy_drop` on a fidelity metric."""
    workdir.mkdir(parents=True, exist_ok=True)
    runs, settings = {}, [("mcomp auto", {})]
    if budget:
        settings.append((
            f"mcomp auto, budget {model.budget_metric} -{BUDGET_DROP}",
            {"metric": model.budget_metric,
             "constraints": f"{{max_accuracy_drop: {BUDGET_DROP}}}"},
        ))  # fmt: skip
    for label, kw in settings:
        folder = workdir / ("mcomp-auto-budget" if kw else "mcomp-auto")
        folder.mkdir(parents=True, exist_ok=True)
        recipe = folder / "recipe.yaml"
        write_recipe(model, source, data, "quantize: {mode: auto}", recipe, **kw)
        runs[label] = run_mcomp(recipe, folder / "out")
    return runs


def stage_seconds(report: dict | None, stage: str) -> float | None:
    if not report:
        return None
    times = [s.get("seconds") for s in report.get("stages", []) if s.get("type") == stage]
    return times[0] if times else None


def clean(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
