"""Magnitude pruning of LSTM/GRU layers (opt-in through `layer_types`): every input and hidden
matrix of every direction gets its zeros, the refit fits them, training keeps them, int8 keeps
them, and the structured methods refuse recurrent layers at validate time."""

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
    # the refit fits the LSTM's matrices as the Linear maps they are inside each step
    refit = prune["details"]["reconstruct"]
    assert "rnn" not in refit["not_reconstructed"] and "conv" in refit["layers"]
    for matrix in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse"):
        errors = refit["layers"][f"rnn.{matrix}"]
        assert errors["error_reconstructed"] < errors["error_magnitude"], matrix
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


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_the_refit_fits_recurrent_matrices_and_the_output_moves_back(cell):
    import copy

    sys.path.insert(0, str(TESTS))
    from prunable_models import RecurrentNet

    from mcomp.compressors.prune.magnitude import prune_magnitude
    from mcomp.compressors.prune.reconstruct import reconstruct_pruned
    from mcomp.training.masks import weight_tensors
    from tests.test_prune_reconstruct import relative_error, smooth

    torch.manual_seed(0)
    net = RecurrentNet(cell).eval()
    original, plain = copy.deepcopy(net), copy.deepcopy(net)
    calibration, held_out = smooth((256, 1, 8, 8), 0), smooth((128, 1, 8, 8), 1)
    targets = [("conv", net.conv), ("rnn", net.rnn), ("head", net.head)]
    dense = {k: w.detach().clone() for n, m in targets for k, w in weight_tensors(n, m)}
    prune_magnitude([(n, getattr(plain, n)) for n, _ in targets], sparsity=0.6, scope="global")
    masks = prune_magnitude(targets, sparsity=0.6, scope="global")
    counts = {k: int((~v).sum()) for k, v in masks.items()}
    batches = [(b,) for b in torch.split(calibration, 32)]
    facts = reconstruct_pruned(net, targets, masks, dense, batches, choose_mask=True)
    assert facts["not_reconstructed"] == {}
    keys = {f"rnn.{k}" for k in recurrent_weights(net)}
    assert keys <= set(facts["layers"])
    assert {k: int((~v).sum()) for k, v in masks.items()} == counts  # the same zeros per matrix
    parameters = dict(net.named_parameters())
    for key, kept in masks.items():
        assert not parameters[key][~kept].any(), key
    with torch.no_grad():
        before = relative_error(plain(held_out), original(held_out))
        after = relative_error(net(held_out), original(held_out))
    assert after < 0.6 * before, (before, after)  # on inputs the refit never saw


def test_a_recurrent_layer_with_an_initial_state_is_named_not_refitted():
    from mcomp.compressors.prune.magnitude import prune_magnitude
    from mcomp.compressors.prune.reconstruct import reconstruct_pruned
    from mcomp.training.masks import weight_tensors

    class WithState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(4, 8, batch_first=True)
            self.h0 = torch.nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x):
            return self.rnn(x, self.h0.expand(1, len(x), 8).contiguous())[0]

    torch.manual_seed(0)
    net = WithState().eval()
    targets = [("rnn", net.rnn)]
    dense = {k: w.detach().clone() for n, m in targets for k, w in weight_tensors(n, m)}
    masks = prune_magnitude(targets, sparsity=0.5, scope="layer")
    pruned = {k: w.detach().clone() for k, w in weight_tensors("rnn", net.rnn)}
    facts = reconstruct_pruned(net, targets, masks, dense, [(torch.randn(16, 6, 4),)])
    assert facts["not_reconstructed"] == {"rnn": "an initial hidden state is passed in"}
    assert all(torch.equal(w, pruned[k]) for k, w in weight_tensors("rnn", net.rnn))
