"""A Hugging Face `transformers` checkpoint from a local folder, end to end.

A tiny BERT classifier is built from a config (random weights, briefly trained on a
synthetic task so that its logits mean something; nothing comes from a hub), saved with
`save_pretrained`, and run through `mcomp run` in a subprocess: prune → distill (no labels,
the original model as teacher) → quantize (int8) → export. `transformers` is the `mcomp[hf]`
extra, which CI installs; without it these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install -e '.[hf]'; CI does)"
)

SEQ = 16
CONFIG = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "num_labels": 3,
    # weights wider than BERT's 0.02 make the tiny model feel a 50 % prune (0.02: the logits
    # move by 2 %, less than distillation's noise on 256 samples); no dropout, so that a
    # short distillation on 256 samples is a clean signal (mcomp trains in train mode)
    "initializer_range": 0.1,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
RECIPE = """\
version: 1
seed: 0
model:
  factory: "FACTORY"
  factory_args: {pretrained_model_name_or_path: ./my-model}
  output: logits
data:
  train: {path: text.npz, inputs: [input_ids, attention_mask], labels: null}
  eval: {path: eval.npz, inputs: [input_ids, attention_mask], labels: null}
  batch_size: 32
runtime: {threads: 1, latency: {runs: 3, warmup: 1, batch: 8}}
stages:
  - prune: {sparsity: 0.5}
  - distill: {loss: mse, epochs: 4, lr: 0.0003}   # logits matched as they are
  - quantize: {mode: dynamic}
  - export: {}
"""
HF_FACTORY = "transformers:AutoModelForSequenceClassification.from_pretrained"


def token_arrays(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """int64 token ids and an attention mask (every third sample padded after 12 tokens)."""
    ids = rng.integers(1, CONFIG["vocab_size"], size=(count, SEQ)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::3, 12:] = 0
    ids[mask == 0] = 0  # the pad token
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder holding `my-model/` (save_pretrained), `text.npz` and `eval.npz` (no labels)."""
    return make_project(tmp_path_factory.mktemp("hf"))


def make_project(folder: Path) -> Path:
    """The tiny BERT, trained for a few steps and saved, and its unlabelled data."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**CONFIG))
    rng = np.random.default_rng(0)
    train = token_arrays(rng, 256)
    # a learnable task (the class of the first token), so that the teacher's logits are
    # decisive and pruning visibly changes them: random weights give near-uniform logits
    ids, mask = (torch.from_numpy(train[k]) for k in ("input_ids", "attention_mask"))
    labels = ids[:, 0] % 3
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        batch = slice((step * 64) % 256, (step * 64) % 256 + 64)
        optimizer.zero_grad()
        model(
            input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]
        ).loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder / "my-model")  # safetensors by default
    np.savez(folder / "text.npz", **train)
    np.savez(folder / "eval.npz", **token_arrays(rng, 96))
    return folder


def write_recipe(folder: Path, name: str, factory: str = HF_FACTORY) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(RECIPE.replace("FACTORY", factory))
    return path


def torch_logits(folder: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder / "my-model").eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    return out.logits.numpy()


@pytest.mark.slow
def test_prune_distill_quantize_export_of_a_local_bert(project, run_mcomp):
    # setup: run from another folder, so that ./my-model is found next to the recipe
    recipe = write_recipe(project, "bert")
    out = project / "out"
    # act
    result = run_mcomp("run", str(recipe), "--out", str(out), cwd=project.parent)
    # check: the run
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    stages = {stage["name"]: stage["metrics"] for stage in report["stages"]}
    pruned, distilled = stages["prune"]["fidelity"], stages["distill"]["fidelity"]
    assert distilled["mean_abs_diff"] < pruned["mean_abs_diff"], (pruned, distilled)
    assert distilled["cosine"] > pruned["cosine"], (pruned, distilled)
    # check: the ONNX file takes int64 ids and the mask by the forward's argument names
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert {node.op_type for node in model.graph.node} & {"MatMulInteger", "DynamicQuantizeLinear"}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)"),
        ("attention_mask", "tensor(int64)"),
    ]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    # check: its logits follow the original model's; int8 of a pruned and distilled model
    # is no copy, so the bound is on agreement and on the error relative to the logits' scale
    arrays = token_arrays(np.random.default_rng(1), 64)
    (got,) = session.run(None, arrays)
    want = torch_logits(project, arrays)
    assert got.shape == want.shape == (64, 3)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.8
    assert np.abs(got - want).mean() < 0.25 * np.abs(want).mean()
    # check: the pruned zeros survive distillation and int8 (dynamic int8 keeps zero at 0)
    assert stages["export"]["sparsity"] >= 0.9 * stages["prune"]["sparsity"] > 0.3


def test_a_factory_attribute_that_does_not_exist_is_one_line(project, run_mcomp):
    recipe = write_recipe(
        project, "typo", "transformers:AutoModelForSequenceClassification.from_pretrain"
    )
    result = run_mcomp("run", str(recipe), "-q", "--out", str(project / "out_typo"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mcomp: error: model.factory: ")
    assert "has no attribute 'from_pretrain' (did you mean 'from_pretrained'?)" in lines[0]


def test_a_missing_local_folder_is_not_taken_for_a_hub_name(project, run_mcomp):
    recipe = project / "missing.yaml"
    recipe.write_text(RECIPE.replace("FACTORY", HF_FACTORY).replace("./my-model", "./no-model"))
    result = run_mcomp("run", str(recipe), "-q", "--out", str(project / "out_missing"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        "model.factory_args.pretrained_model_name_or_path: ./no-model does not exist" in (lines[0])
    )


def test_a_hub_name_is_not_downloaded(project, run_mcomp):
    # a name that is no folder would be a download; mcomp runs the hub client offline
    recipe = project / "hub.yaml"
    recipe.write_text(
        RECIPE.replace("FACTORY", HF_FACTORY).replace("./my-model", "some-org/some-model")
    )
    env_before = os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        result = run_mcomp("run", str(recipe), "--out", str(project / "out_hub"), timeout=120)
    finally:
        if env_before is not None:
            os.environ["HF_HUB_OFFLINE"] = env_before
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("mcomp: error: model.factory: calling "), line
    assert "unexpected" not in line


def test_a_pickled_checkpoint_runs_no_code(project, run_mcomp):
    # setup: a `pytorch_model.bin` whose pickle would call a function while loading
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    folder = project / "pickled"
    shutil.copytree(project / "my-model", folder)
    (folder / "model.safetensors").unlink()
    marker = project / "pickle-ran"
    state = BertForSequenceClassification.from_pretrained(project / "my-model").state_dict()
    state["evil"] = Evil(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    recipe = project / "pickled.yaml"
    recipe.write_text(RECIPE.replace("FACTORY", HF_FACTORY).replace("./my-model", "./pickled"))
    # act
    result = run_mcomp("run", str(recipe), "--out", str(project / "out_pickled"))
    # check: refused by transformers' weights_only load, and the payload never ran
    assert not marker.exists()
    assert result.returncode == 2, result.stderr
    assert "model.factory: calling " in result.stderr.strip().splitlines()[-1]


class Evil:
    """Unpickling this touches a file: the proof that a pickle ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_arrays_in_another_order_than_the_forward_are_refused(project):
    from transformers import AutoModelForSequenceClassification

    from mcomp.errors import DataError
    from mcomp.model.signature import check_argument_order, forward_arguments

    model = AutoModelForSequenceClassification.from_pretrained(project / "my-model")
    arguments = forward_arguments(model)
    assert arguments[:3] == ["input_ids", "attention_mask", "token_type_ids"]
    check_argument_order(["input_ids", "attention_mask"], arguments)  # the forward's order
    check_argument_order(["ids", "mask"], arguments)  # other names: by position
    with pytest.raises(DataError, match="'token_type_ids' would be passed as its argument "):
        check_argument_order(["input_ids", "token_type_ids"], arguments)


def test_text_lines_are_tokenized_by_the_folders_tokenizer(project, monkeypatch):
    # setup: a WordPiece tokenizer saved into a folder, a text file, both next to a recipe
    from transformers import BertTokenizerFast

    from mcomp.data.load import load_datasets
    from mcomp.recipe.schema import DataSpec

    words = ["hello", "world", "mcomp", "prunes", "models"]
    folder = project / "tokenizer"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from the vocabulary file alone (transformers 4 and 5 read it alike), saved in full
    BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    (project / "texts.txt").write_text("hello world\n\nmcomp prunes models\nunknown words\n")
    spec = DataSpec.model_validate(
        {
            "train": {
                "factory": "mcomp.data.hf_text:tokenized_lines",
                "factory_args": {"tokenizer": "./tokenizer", "path": "texts.txt", "max_length": 8},
                "inputs": ["input_ids", "attention_mask"],
                "labels": None,
            }
        }
    )
    # act: from another working directory; the paths are the recipe folder's
    monkeypatch.chdir(project.parent)
    split = load_datasets(spec, base_dir=project, seed=0).train
    # check: one sample per non-empty line, [CLS] w... [SEP] then padding
    ids, mask = split.inputs["input_ids"], split.inputs["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (3, 8)
    assert ids[0].tolist() == [2, 5, 6, 3, 0, 0, 0, 0]
    assert mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert ids[2].tolist()[:4] == [2, 1, 1, 3]  # unknown words are [UNK]
