"""Magnitude pruning of LSTM/GRU layers (opt-in through `layer_types`): every input and hidden
matrix of every direction gets its zeros, training keeps them, int8 keeps them, and the
structured methods refuse recurrent layers at validate time."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from mcomp.cli.main import cli
from tests.helpers import run_recipe

TESTS = Path(__file__).resolve().parent

RECIPE = f"""\
version: 1
seed: 0
model: {{path: net.pt, factory: "prunable_models:recurrent_net", factory_args: {{cell: CELL}},
        python_path: ["{TESTS}"]}}
data: {{train: {{builtin: digits, samples: 192}}, eval: {{builtin: digits, samples: 64}},
       calibration: {{builtin: digits, samples: 32}}}}
runtime: {{threads: 1, latency: {{enabled: false}}}}
stages:
STAGES"""


def project(folder: Path, cell: str, stages: str) -> Path:
    sys.path.insert(0, str(TESTS))
    from prunable_models import recurrent_net

    torch.save(recurrent_net(cell).state_dict(), folder / "net.pt")
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.replace("CELL", cell).replace("STAGES", stages))
    return path


def recurrent_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.rnn.named_parameters() if n.startswith("weight_")}


def test_prune_magnitude_gives_every_recurrent_matrix_its_zeros():
    sys.path.insert(0, str(TESTS))
    from prunable_models import recurrent_net

    from mcomp.compressors.prune.magnitude import prune_magnitude

    net = recurrent_net("LSTM")
    weights = recurrent_weights(net)
    assert len(weights) == 4  # input and hidden matrices, both directions
    biases = {n: p.detach().clone() for n, p in net.rnn.named_parameters() if "bias" in n}
    masks = prune_magnitude([("rnn", net.rnn), ("head", net.head)], sparsity=0.5, scope="layer")
    assert set(masks) == {f"rnn.{n}" for n in weights} | {"head.weight"}
    for name, weight in weights.items():
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())
        assert torch.equal(masks[f"rnn.{name}"], weight != 0)
    for name, bias in biases.items():  # biases stay dense
        assert torch.equal(dict(net.rnn.named_parameters())[name], bias)
    # the LSTM computes with the pruned matrices (its flat weights are the same tensors)
    x = torch.randn(2, 5, 16)
    dense = torch.nn.LSTM(16, 16, batch_first=True, bidirectional=True)
    dense.load_state_dict(net.rnn.state_dict())
    assert torch.allclose(net.rnn(x)[0], dense(x)[0])

    net = recurrent_net("GRU")
    masks = prune_magnitude([("rnn", net.rnn)], sparsity=0.7, scope="global")
    total = sum(w.numel() for w in recurrent_weights(net).values())
    zeros = sum(int((w == 0).sum()) for w in recurrent_weights(net).values())
    assert zeros == round(0.7 * total)


def test_lstm_pruning_survives_finetune_and_dynamic_int8(tmp_path):
    stages = (
        "  - prune: {sparsity: 0.5, scope: layer, layer_types: [Conv1d, LSTM, Linear]}\n"
        "  - finetune: {epochs: 2, lr: 0.003}\n"
        "  - quantize: {mode: dynamic}\n"
    )
    result, _ = run_recipe(project(tmp_path, "LSTM", stages), tmp_path / "out")
    prune, finetune, quantize = result.report["stages"]
    layers = prune["details"]["layers"]
    for matrix in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse"):
        assert layers[f"rnn.{matrix}"] == 0.5
    # the refit cannot fit a recurrent layer: it says so and refits the others
    refit = prune["details"]["reconstruct"]
    assert refit["not_reconstructed"]["rnn"] == "LSTM" and "conv" in refit["layers"]
    assert finetune["metrics"]["nonzero_params"] == prune["metrics"]["nonzero_params"]
    assert finetune["details"]["train_loss"][-1] < finetune["details"]["train_loss"][0]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    lstm = [n for n in graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert len(lstm) == 1
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name in lstm[0].input[1:3]:  # W and R: int8 with the pruned weights still zero
        weights = initializers[name]
        assert weights.dtype == np.int8
        assert float((weights == 0).mean()) >= 0.5


def test_gradual_pruning_of_a_gru(tmp_path):
    stages = "  - prune: {sparsity: 0.6, layer_types: [GRU], gradual: {steps: 2, epochs: 2}}\n"
    result, _ = run_recipe(project(tmp_path, "GRU", stages), tmp_path / "out")
    details = result.report["stages"][0]["details"]
    assert details["schedule"][-1] == pytest.approx(0.6)
    assert set(details["layers"]) == {
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "rnn.weight_ih_l0_reverse",
        "rnn.weight_hh_l0_reverse",
    }
    # scope global: 60 % of all the GRU's weights, not necessarily of each matrix
    sizes = {"rnn.weight_ih_l0": 48 * 16, "rnn.weight_hh_l0": 48 * 16}
    sizes |= {f"{k}_reverse": v for k, v in sizes.items()}
    zeros = sum(details["layers"][k] * n for k, n in sizes.items())
    assert zeros == pytest.approx(0.6 * sum(sizes.values()), abs=4)


@pytest.mark.parametrize("method", ["channel", "layer"])
def test_structured_pruning_refuses_recurrent_layers_at_validate_time(tmp_path, method):
    path = project(tmp_path, "LSTM", f"  - prune: {{method: {method}, layer_types: [LSTM]}}\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "layer_types LSTM: only `method: magnitude` prunes recurrent layers" in result.output
    assert "Traceback" not in result.output
