"""NNCF's post-training quantization (`nncf.quantize`, ONNX backend), run in its own venv.

NNCF is not installed into mcomp's venv: `nncf_python()` creates NNCF_VENV (default
`~/.cache/mcomp-bench/nncf-venv`) with `pip install nncf==3.4.0 onnx onnxruntime` pinned
to the versions mcomp's venv has, so both sides calibrate with the same onnxruntime. Its
ONNX backend needs no torch; a note is printed if torch is there anyway (a CUDA torch
would be gigabytes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fetch
import numpy as np

NNCF_VERSION = "3.4.0"
NNCF_VENV = Path(os.environ.get("NNCF_VENV", fetch.CACHE / "nncf-venv"))
SCRIPT = """
import json, sys, time

import onnxruntime

source, samples, target, name, model_type, threads = sys.argv[1:7]
if int(threads) > 0:
    # NNCF's ONNX engine makes its sessions with onnxruntime's default thread pool, whose
    # threads are pinned to every core, outside the `taskset` the benchmark runs under
    # (125 % CPU measured under `taskset -c 0`): give it the threads mcomp gets
    plain_session = onnxruntime.InferenceSession

    def one_pool_session(model, sess_options=None, *args, **kwargs):
        sess_options = sess_options or onnxruntime.SessionOptions()
        sess_options.intra_op_num_threads = int(threads)
        sess_options.inter_op_num_threads = 1
        return plain_session(model, sess_options, *args, **kwargs)

    onnxruntime.InferenceSession = one_pool_session

import nncf
import numpy as np
import onnx

model = onnx.load(source)
x = np.load(samples)["x"]
dataset = nncf.Dataset([{name: x[i : i + 1]} for i in range(len(x))])
options = {} if model_type == "default" else {"model_type": nncf.ModelType.TRANSFORMER}
start = time.perf_counter()
quantized = nncf.quantize(model, dataset, subset_size=len(x), **options)
seconds = time.perf_counter() - start
onnx.save(quantized, target)
print(json.dumps({"nncf": nncf.__version__, "seconds": seconds}))
"""


def nncf_python() -> Path:
    """The interpreter of NNCF's venv, created when missing."""
    import onnx
    import onnxruntime

    python = NNCF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(NNCF_VENV)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import nncf, onnx, onnxruntime"], capture_output=True
    )
    if probe.returncode:
        packages = [
            f"nncf=={NNCF_VERSION}",
            f"onnx=={onnx.__version__}",
            f"onnxruntime=={onnxruntime.__version__}",
        ]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    if subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0:
        sys.stderr.write(f"note: {NNCF_VENV} has torch installed (its ONNX backend needs none)\n")
    return python


def nncf_quantize(
    source: Path,
    calibration: np.ndarray,
    input_name: str,
    workdir: Path,
    transformer: bool,
    threads: int = 0,
) -> tuple[Path, dict]:
    """NNCF's int8 model of `source` (every option at its default, or
    model_type=TRANSFORMER), calibrated on all of `calibration`; returns the file and
    {nncf: version, seconds: the nncf.quantize call's wall time}. `threads`: onnxruntime's
    intra-op threads for NNCF's sessions (0: onnxruntime's default, every core)."""
    kind = "transformer" if transformer else "default"
    samples, target = workdir / "nncf_calibration.npz", workdir / f"nncf_{kind}.onnx"
    script = workdir / "nncf_ptq.py"
    np.savez(samples, x=calibration)
    script.write_text(SCRIPT)
    done = subprocess.run(
        [str(nncf_python()), str(script), str(source), str(samples), str(target), input_name,
         kind, str(threads)],
        capture_output=True, text=True, cwd=workdir,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"nncf.quantize failed: {done.stderr.strip()[-1500:]}")
    return target, json.loads(done.stdout.strip().splitlines()[-1])
