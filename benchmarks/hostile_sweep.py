"""Throw hostile and careless inputs at the real `mcomp` command line and count what happens.

    python benchmarks/hostile_sweep.py            # every case, a table and the counts
    python benchmarks/hostile_sweep.py --only pt2  # the cases whose name contains 'pt2'

Each case builds its files in a fresh folder (a tiny 4-16-2 MLP, its state_dict, 64-sample
.npz splits), runs `python -m mcomp ...` in a subprocess (1 thread, a memory limit of 3 GiB,
a time limit) and is classified:

- clean: the expected exit code; for exit 2 one `mcomp: error:` line on stderr
- traceback: a Python traceback on stderr
- catch-all: mcomp's "unexpected error" / "this is a bug" line
- wrong exit: any other exit code than expected (e.g. 0 for labels that do not fit)
- code ran: a marker file that the input's code would create exists afterwards
- killed: the memory or time limit ended the process

This is a checker, not a benchmark: nothing is timed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MEMORY_LIMIT = 3 * 2**30
TIME_LIMIT = 120

MODELS_PY = """
import torch
from torch import nn


def make(inputs=4, hidden=16, outputs=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
"""

BASE = """\
version: 1
model: {path: model.pt, factory: "mymodels:make", python_path: ["."]}
data: {train: data.npz, eval: data.npz, batch_size: 32}
runtime: {threads: 1, latency: {runs: 2, warmup: 0, batch: 4}}
stages:
  - prune: {sparsity: 0.5}
  - export: {}
"""


class Evil:
    """A pickle that, when loaded, creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Case:
    name: str
    args: list[str]
    setup: Callable[[Path], None] | None = None
    expect: int = 2
    want: str | None = None  # the message must contain this (else: "misleading")


def project(folder: Path) -> None:
    import numpy as np
    import torch

    (folder / "mymodels.py").write_text(MODELS_PY)
    namespace: dict = {}
    exec(MODELS_PY, namespace)
    module = namespace["make"]()
    torch.save(module.state_dict(), folder / "model.pt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(folder / "data.npz", x=x, y=y)
    (folder / "r.yaml").write_text(BASE)


def recipe(text: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "r.yaml").write_text(text)

    return write


def edit(old: str, new: str) -> Callable[[Path], None]:
    return recipe(BASE.replace(old, new))


def data(**arrays_fn) -> Callable[[Path], None]:
    """Write bad.npz from functions of the good (x, y); the recipe's eval (and train) use it."""

    def write(folder: Path) -> None:
        import numpy as np

        good = np.load(folder / "data.npz")
        arrays = {k: fn(good["x"], good["y"]) for k, fn in arrays_fn.items()}
        np.savez(folder / "bad.npz", **arrays)

    return write


def both(*setups) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        for setup in setups:
            setup(folder)

    return run


def pt2(folder: Path, member: str = "sample") -> None:
    """A real torch.export archive with one member replaced by a malicious payload."""
    import torch

    namespace: dict = {}
    exec(MODELS_PY, namespace)
    module = namespace["make"]().eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (torch.randn(3, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "good.pt2")
    marker = folder / "MARKER"
    buffer = io.BytesIO()
    torch.save(Evil(str(marker)), buffer)

    def replace(name: str, raw: bytes) -> bytes:
        if member == "sample" and "/data/sample_inputs/" in name:
            return buffer.getvalue()
        if member in ("expr", "guard") and name.endswith("/models/model.json"):
            doc = json.loads(raw)
            if member == "guard":
                doc["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
                return json.dumps(doc).encode()
            text = json.dumps(doc)
            return text.replace(
                '"Symbol(', f"\"__import__('os').system('touch {marker}') or Symbol(", 1
            ).encode()
        return raw

    with (
        zipfile.ZipFile(folder / "good.pt2") as src,
        zipfile.ZipFile(folder / "evil.pt2", "w") as dst,
    ):
        for info in src.infolist():
            dst.writestr(info, replace(info.filename, src.read(info.filename)))


def pt2_recipe(member: str = "sample", stages: str = "  - export: {}\n") -> Callable:
    def setup(folder: Path) -> None:
        pt2(folder, member)
        (folder / "r.yaml").write_text(
            BASE.replace(
                'model: {path: model.pt, factory: "mymodels:make", python_path: ["."]}',
                "model: {path: evil.pt2}",
            ).split("stages:")[0]
            + "stages:\n"
            + stages
        )

    return setup


def teacher_recipe(folder: Path) -> None:
    pt2(folder)
    stages = "  - distill: {epochs: 1, teacher: {path: evil.pt2}}\n  - export: {}\n"
    (folder / "r.yaml").write_text(BASE.split("stages:")[0] + "stages:\n" + stages)


def alias_bomb(levels: int) -> str:
    lines = ["version: 1", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\nmodel: {builtin: digits_cnn}\nstages: [{export: {}}]\n"


def flow_alias_bomb(levels: int) -> str:
    """The alias bomb on one line (a `--set` value)."""
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def fake_dependency(folder: Path) -> None:
    """python_path: [lib] holds the factory and fake libraries that would create the marker.
    (Not the working directory itself: `python -m` puts that first on sys.path.)"""
    lib = folder / "lib"
    lib.mkdir()
    (lib / "mymodels.py").write_text(MODELS_PY)
    marker = folder / "MARKER"
    for name in ("onnxruntime", "onnx", "yaml", "torch_pruning", "onnxscript"):
        (lib / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('{name}')\n")
    (folder / "r.yaml").write_text(BASE.replace('python_path: ["."]', 'python_path: ["lib"]'))


def pickled_custom(folder: Path) -> None:
    import torch

    (folder / "custom.py").write_text("import torch\n\nclass Net(torch.nn.Linear):\n    pass\n")
    sys.path.insert(0, str(folder))
    import custom  # noqa: F401

    torch.save(custom.Net(4, 2), folder / "pickled.pt")
    sys.path.remove(str(folder))
    del sys.modules["custom"]
    (folder / "custom.py").unlink()


def bad_crc(folder: Path) -> None:
    raw = bytearray((folder / "model.pt").read_bytes())
    with zipfile.ZipFile(folder / "model.pt") as archive:
        offset = next(i for i in archive.infolist() if i.filename.endswith("data/0")).header_offset
    # flip one byte of the first tensor's data (stored, not compressed): the CRC now lies;
    # the data starts after the local header, whose padding torch sizes itself
    start = offset + 30 + int.from_bytes(raw[offset + 26 : offset + 28], "little")
    start += int.from_bytes(raw[offset + 28 : offset + 30], "little")
    raw[start + 1] ^= 0xFF
    (folder / "crc.pt").write_bytes(bytes(raw))


def blocked_pickle(folder: Path) -> None:
    """A pickle torch's safe loader blocks (a function call): refused, not 'corrupt'."""
    import torch

    torch.save({"w": Evil(str(folder / "MARKER"))}, folder / "odd.pt")


def nan_weights(folder: Path) -> None:
    import torch

    state = torch.load(folder / "model.pt", weights_only=True)
    state["0.weight"][0, 0] = float("nan")
    torch.save(state, folder / "model.pt")


def printing_factory(folder: Path) -> None:
    (folder / "mymodels.py").write_text(
        MODELS_PY.replace(
            "    torch.manual_seed(0)",
            "    print('hello from the factory')\n    torch.manual_seed(0)",
        )
    )


def raising_dataset(folder: Path) -> None:
    (folder / "mydata.py").write_text(
        "import numpy as np\nimport torch\n\n"
        "class Bad(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 64\n"
        "    def __getitem__(self, i):\n"
        "        if i == 40:\n            raise ValueError('sample 40 is broken')\n"
        "        return np.zeros(4, np.float32), 0\n\n"
        "def make():\n    return Bad()\n"
    )


def raising_metric(folder: Path) -> None:
    (folder / "mymetric.py").write_text("def score(outputs, labels):\n    raise KeyError('oops')\n")


def cases() -> list[Case]:
    import numpy as np

    run = ["run", "r.yaml", "--out", "out", "-q"]
    validate = ["validate", "r.yaml"]
    out_of_range = data(x=lambda x, y: x, y=lambda x, y: y + 100)
    drop = "constraints: {max_accuracy_drop: 0.01}\n"
    return [
        # recipes
        Case("alias bomb 9 levels", validate, recipe(alias_bomb(9))),
        Case(
            "small alias in factory_args (allowed)",
            validate,
            edit('"mymodels:make",', '"mymodels:make", factory_args: {a: &x [1,2], b: *x},'),
            expect=0,
        ),
        Case("duplicate key model", validate, recipe(BASE + "model: {builtin: digits_cnn}\n")),
        Case("seed '5'", validate, recipe(BASE + "seed: '5'\n")),
        Case("seed true", validate, recipe(BASE + "seed: true\n")),
        Case("sparsity '0.5'", validate, edit("sparsity: 0.5", "sparsity: '0.5'")),
        Case(
            "allow_pickle 'yes'",
            validate,
            edit('python_path: ["."]', 'python_path: ["."], allow_pickle: "yes"'),
        ),
        Case("batch_size true", validate, edit("batch_size: 32", "batch_size: true")),
        Case("seed -1", run, recipe(BASE + "seed: -1\n")),
        Case("seed 2**70", run, recipe(BASE + f"seed: {2**70}\n")),
        Case("threads 10**12", run, edit("threads: 1", "threads: 1000000000000")),
        Case("--threads 10**12", [*run, "--threads", "1000000000000"]),
        Case("latency batch 10**12", validate, edit("batch: 4", "batch: 1000000000000")),
        Case("latency runs 10**12", validate, edit("runs: 2", "runs: 1000000000000")),
        Case(
            "epochs 1e9",
            validate,
            edit("- prune: {sparsity: 0.5}", "- finetune: {epochs: 1000000000}"),
        ),
        Case(
            "calibration_samples 10**12",
            validate,
            edit("batch_size: 32", "batch_size: 32, calibration_samples: 1000000000000"),
        ),
        Case(
            "huge list python_path",
            validate,
            edit('python_path: ["."]', "python_path: [" + ",".join(['"."'] * 200000) + "]"),
        ),
        Case("100k nesting", validate, recipe(BASE + "x: " + "[" * 100000 + "]" * 100000 + "\n")),
        Case("--set k=[1,2", [*validate, "--set", "seed=[1,2"]),
        Case(
            "--set typo",
            [*validate, "--set", "stages.0.prune.sparsty=0.9"],
            want="--set stages.0.prune.sparsty",
        ),
        Case("--set into a scalar", [*validate, "--set", "seed.x=1"]),
        Case(
            "--set alias bomb",
            [
                *validate,
                "--set",
                "model.factory_args={bomb: " + flow_alias_bomb(9) + "}",
            ],
        ),
        Case(
            "inputs [x, x]",
            run,
            edit(
                "data: {train: data.npz, eval: data.npz",
                "data: {train: {path: data.npz, inputs: [x, x]}, "
                "eval: {path: data.npz, inputs: [x, x]}",
            ),
        ),
        Case(
            "model.inputs two for one",
            run,
            edit(
                'python_path: ["."]}',
                'python_path: ["."], inputs: [{name: a, shape: [4]}, {name: b, shape: [4]}]}',
            ),
        ),
        # labels
        Case(
            "eval labels out of range + gate",
            run,
            both(out_of_range, recipe(BASE.replace("eval: data.npz", "eval: bad.npz") + drop)),
            want="data.eval",
        ),
        Case(
            "eval labels negative",
            run,
            both(
                data(x=lambda x, y: x, y=lambda x, y: y - 5),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
        ),
        Case(
            "eval labels float",
            run,
            both(
                data(x=lambda x, y: x, y=lambda x, y: y + 0.5),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
        ),
        Case(
            "eval labels strings",
            run,
            both(
                data(x=lambda x, y: x, y=lambda x, y: y.astype(str)),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
        ),
        Case(
            "eval labels one-hot",
            run,
            both(
                data(x=lambda x, y: x, y=lambda x, y: np.eye(2)[y]),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
            want="one-hot",
        ),
        Case(
            "train labels out of range",
            run,
            both(
                out_of_range,
                recipe(
                    BASE.replace("train: data.npz", "train: bad.npz").replace(
                        "- prune: {sparsity: 0.5}", "- finetune: {epochs: 1}"
                    )
                ),
            ),
            want="data.train",
        ),
        Case(
            "train labels one-hot",
            run,
            both(
                data(x=lambda x, y: x, y=lambda x, y: np.eye(2)[y]),
                recipe(
                    BASE.replace("train: data.npz", "train: bad.npz").replace(
                        "- prune: {sparsity: 0.5}", "- finetune: {epochs: 1}"
                    )
                ),
            ),
            want="one-hot",
        ),
        Case(
            "eval --data labels out of range",
            [
                "eval",
                "model.pt",
                "--factory",
                "mymodels:make",
                "--python-path",
                ".",
                "--data",
                "bad.npz",
            ],
            out_of_range,
        ),
        Case(
            "compare --data labels out of range",
            [
                "compare",
                "model.pt",
                "model.pt",
                "--factory",
                "mymodels:make",
                "--python-path",
                ".",
                "--data",
                "bad.npz",
                "--runs",
                "1",
                "--rounds",
                "1",
            ],
            out_of_range,
        ),
        # NaN / Inf
        Case(
            "NaN in eval inputs",
            run,
            both(
                data(
                    x=lambda x, y: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x),
                    y=lambda x, y: y,
                ),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
            want="data.eval",
        ),
        Case(
            "Inf in train inputs",
            run,
            both(
                data(
                    x=lambda x, y: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x),
                    y=lambda x, y: y,
                ),
                recipe(
                    BASE.replace("train: data.npz", "train: bad.npz").replace(
                        "- prune: {sparsity: 0.5}", "- finetune: {epochs: 1}"
                    )
                ),
            ),
            want="data.train",
        ),
        Case("NaN in weights", run, nan_weights, want="0.weight"),
        Case(
            "finetune lr 1e30",
            run,
            edit("- prune: {sparsity: 0.5}", "- finetune: {epochs: 1, lr: 1.0e30}"),
            want="lr",
        ),
        # data files
        Case(
            ".npy saved as .npz",
            run,
            both(
                lambda f: np.save(f / "bad.npy", np.zeros((64, 4), np.float32)),
                lambda f: os.rename(f / "bad.npy", f / "bad.npz"),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
        ),
        Case(
            "string input arrays",
            run,
            both(
                data(x=lambda x, y: x.astype(str), y=lambda x, y: y),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
        ),
        Case(
            "eval file wrongly shaped",
            run,
            both(
                data(x=lambda x, y: np.zeros((64, 5), np.float32), y=lambda x, y: y),
                edit("eval: data.npz", "eval: bad.npz"),
            ),
            want="data.eval",
        ),
        Case(
            "data path a directory",
            run,
            both(lambda f: (f / "dir.npz").mkdir(), edit("eval: data.npz", "eval: dir.npz")),
            want="directory",
        ),
        Case(
            "data path /dev/zero",
            run,
            edit("eval: data.npz", "eval: /dev/zero"),
            want="not a regular file",
        ),
        Case(
            "Dataset raises mid-iteration",
            run,
            both(raising_dataset, edit("eval: data.npz", 'eval: {factory: "mydata:make"}')),
        ),
        Case(
            "user metric raises",
            run,
            both(raising_metric, recipe(BASE + 'metric: "mymetric:score"\n')),
        ),
        # model files
        Case(
            "model path a directory",
            run,
            both(lambda f: (f / "dir.pt").mkdir(), edit("path: model.pt", "path: dir.pt")),
            want="directory",
        ),
        Case(
            "model path a FIFO",
            run,
            both(lambda f: os.mkfifo(f / "fifo.pt"), edit("path: model.pt", "path: fifo.pt")),
            want="not a regular file",
        ),
        Case(
            "model path /dev/zero",
            run,
            edit("path: model.pt", "path: /dev/zero"),
            want="not a regular file",
        ),
        Case("inspect a directory", ["inspect", "."], want="directory"),
        Case(
            ".pt with a wrong CRC",
            run,
            both(bad_crc, edit("path: model.pt", "path: crc.pt")),
            want="CRC",
        ),
        Case(
            "pickle the safe loader blocks",
            run,
            both(blocked_pickle, edit("path: model.pt", "path: odd.pt")),
            want="refuses",
        ),
        Case(
            "--allow-pickle, class not importable",
            [*run, "--allow-pickle"],
            both(
                pickled_custom,
                edit(
                    'path: model.pt, factory: "mymodels:make", python_path: ["."]',
                    "path: pickled.pt",
                ),
            ),
            want="python_path",
        ),
        Case("factory print() on stdout", run, printing_factory, expect=0),
        Case("python_path shadows dependencies", run, fake_dependency, expect=0),
        Case("init into /proc", ["init", "--out", "/proc/mcomp-sweep/recipe.yaml"]),
        Case("init into a read-only /sys", ["init", "--out", "/sys/recipe.yaml"]),
        # malicious .pt2 at every entry point
        Case("pt2 sample_inputs: run", run, pt2_recipe()),
        Case("pt2 expr_str: run", run, pt2_recipe("expr")),
        Case("pt2 guards_code: run", run, pt2_recipe("guard")),
        Case(
            "pt2 sample_inputs: --set model.path",
            [*run, "--set", "model.path=evil.pt2", "--set", "model.factory=null"],
            pt2,
        ),
        Case("pt2 sample_inputs: inspect", ["inspect", "evil.pt2"], pt2),
        Case("pt2 guards_code: inspect", ["inspect", "evil.pt2"], lambda f: pt2(f, "guard")),
        Case("pt2 sample_inputs: eval", ["eval", "evil.pt2", "--data", "data.npz"], pt2),
        Case(
            "pt2 sample_inputs: compare",
            ["compare", "evil.pt2", "evil.pt2", "--runs", "1", "--rounds", "1"],
            pt2,
        ),
        Case(
            "pt2 sample_inputs: sensitivity",
            ["sensitivity", "r.yaml", "--out", "sens", "--ratios", "0.5", "-q"],
            pt2_recipe(stages="  - prune: {sparsity: 0.5}\n"),
        ),
        Case("pt2 sample_inputs: distill teacher", run, teacher_recipe),
    ]


def limit_resources() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def classify(case: Case, proc: subprocess.CompletedProcess | None, folder: Path) -> str:
    if proc is None:
        return "killed"
    if (folder / "MARKER").exists():
        return "code ran"
    if proc.returncode < 0 or proc.returncode == 137:
        return "killed"
    if "Traceback (most recent call last)" in proc.stderr:
        return "traceback"
    if "unexpected error" in proc.stderr or "this is a bug in mcomp" in proc.stderr:
        return "catch-all"
    if proc.returncode != case.expect:
        return "wrong exit"
    if case.expect == 2:
        lines = proc.stderr.strip().splitlines()
        usage = lines and lines[0].startswith("Usage:") and "Error:" in proc.stderr
        if not usage and (len(lines) != 1 or not lines[0].startswith("mcomp: error:")):
            return "not one line"
        if case.want is not None and case.want not in proc.stderr:
            return "misleading"
    if case.expect == 0 and proc.stdout.strip().count("\n") > 0:
        return "stdout not clean"
    return "clean"


def run_case(case: Case) -> tuple[str, subprocess.CompletedProcess | None]:
    with tempfile.TemporaryDirectory(prefix="mcomp-sweep-") as tmp:
        folder = Path(tmp)
        project(folder)
        if case.setup is not None:
            case.setup(folder)
        env = {**os.environ, "MCOMP_THREADS": "1", "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "mcomp", *case.args],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=TIME_LIMIT,
                env=env,
                stdin=subprocess.DEVNULL,
                preexec_fn=limit_resources,
            )
        except subprocess.TimeoutExpired:
            proc = None
        return classify(case, proc, folder), proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--json", type=Path, help="also write every case's outcome here")
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    rows = []
    selected = [c for c in cases() if args.only is None or args.only in c.name]
    for case in selected:
        verdict, proc = run_case(case)
        counts[verdict] += 1
        code = None if proc is None else proc.returncode
        tail = "" if proc is None else (proc.stderr.strip().splitlines() or [""])[-1][:150]
        rows.append({"case": case.name, "verdict": verdict, "exit": code, "stderr": tail})
        print(f"{verdict:16} exit={code!s:4} {case.name}: {tail}", flush=True)
    print()
    print(f"cases tried: {len(selected)}")
    for verdict in (
        "clean",
        "misleading",
        "traceback",
        "catch-all",
        "wrong exit",
        "not one line",
        "stdout not clean",
        "code ran",
        "killed",
    ):
        print(f"  {verdict}: {counts[verdict]}")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
