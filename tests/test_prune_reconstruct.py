"""`prune.reconstruct`: after one-shot magnitude pruning, each pruned layer's kept weights (and
bias) are refitted by least squares to what the dense layer computed on unlabelled inputs;
the mask stays the magnitude one, or the refit places the same count of zeros itself."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mcomp.compressors.prune import reconstruct
from mcomp.compressors.prune.magnitude import prune_magnitude
from mcomp.compressors.prune.reconstruct import reconstruct_pruned
from tests.helpers import run_recipe

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def smooth(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Inputs whose neighbours are correlated (running sums of noise), as in images and
    audio: what lets the kept weights stand in for the pruned ones."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).cumsum(-1)
    if len(shape) == 4:
        x = x.cumsum(-2)
    return (x / x.std()).float()


def prune_and_refit(net: nn.Module, x: torch.Tensor, sparsity: float = 0.5):
    """Magnitude-prune `net` globally, then refit it on `x`; (masks, dense weights, facts)."""
    targets = [(name, m) for name, m in net.named_modules() if isinstance(m, LAYERS)]
    dense = {f"{name}.weight": m.weight.detach().clone() for name, m in targets}
    masks = prune_magnitude(targets, sparsity=sparsity, scope="global")
    facts = reconstruct_pruned(net, targets, masks, dense, [(b,) for b in torch.split(x, 16)])
    return masks, dense, facts


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def assert_mask_held(net: nn.Module, masks: dict) -> None:
    parameters = dict(net.named_parameters())
    for key, kept in masks.items():
        assert not parameters[key][~kept].any(), key  # pruned weights are exactly zero


def test_refit_reproduces_a_layer_whose_inputs_span_fewer_dimensions_than_it_keeps():
    torch.manual_seed(0)
    basis = torch.randn(4, 16)
    x = torch.randn(256, 4) @ basis  # 4-d inputs in R^16: 8 kept weights per row suffice
    net = nn.Sequential(nn.Linear(16, 8))
    original = copy.deepcopy(net)
    masks, _, facts = prune_and_refit(net, x)
    layer = facts["layers"]["0"]
    assert layer["solver"] == "exact"
    assert layer["error_magnitude"] > 0.2
    assert layer["error_reconstructed"] < 0.01
    with torch.no_grad():
        assert relative_error(net(x), original(x)) == pytest.approx(
            layer["error_reconstructed"], abs=1e-4
        )  # the reported error is the layer's real output error on the samples
        held_out = torch.randn(64, 4) @ basis
        assert relative_error(net(held_out), original(held_out)) < 0.01
    assert_mask_held(net, masks)
    assert not torch.equal(net[0].bias, original[0].bias)  # the bias was refitted too


def cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: refitted channel by channel
        nn.ReLU(),
        nn.Conv2d(8, 12, 1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12 * 4, 10),
    ).eval()


def conv1d_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv1d(1, 8, 9, stride=2, padding=4),
        nn.ReLU(),
        nn.Conv1d(8, 8, 5, padding=2, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(4),
        nn.Flatten(),
        nn.Linear(8 * 4, 6),
    ).eval()


@pytest.mark.parametrize(
    "make, shape", [(cnn, (2, 8, 8)), (conv1d_net, (1, 64))], ids=["conv2d", "conv1d"]
)
def test_every_layer_kind_is_refitted_and_the_model_output_moves_back(make, shape):
    net = make()
    original = copy.deepcopy(net)
    calibration, held_out = smooth((128, *shape), 0), smooth((64, *shape), 1)
    magnitude_only = copy.deepcopy(net)
    prune_magnitude(
        [(n, m) for n, m in magnitude_only.named_modules() if isinstance(m, LAYERS)],
        sparsity=0.5,
        scope="global",
    )
    masks, _, facts = prune_and_refit(net, calibration)
    layers = [n for n, m in net.named_modules() if isinstance(m, LAYERS)]
    assert list(facts["layers"]) == layers  # forward order, every one refitted
    assert facts["not_reconstructed"] == {} and facts["samples"] == 128
    for name, layer in facts["layers"].items():
        assert layer["error_reconstructed"] < layer["error_magnitude"], name
    assert_mask_held(net, masks)
    with torch.no_grad():
        plain = relative_error(magnitude_only(held_out), original(held_out))
        refitted = relative_error(net(held_out), original(held_out))
    assert refitted < 0.7 * plain, (plain, refitted)  # on inputs the refit never saw


def test_wide_layers_take_sparsegpts_update_and_still_improve(monkeypatch):
    monkeypatch.setattr(reconstruct, "EXACT_FLOPS", 0)  # every layer counts as too wide
    net = cnn()
    original = copy.deepcopy(net)
    x = smooth((128, 2, 8, 8), 0)
    masks, _, facts = prune_and_refit(net, x)
    assert {layer["solver"] for layer in facts["layers"].values()} == {"sparsegpt"}
    for name, layer in facts["layers"].items():
        assert layer["error_reconstructed"] < layer["error_magnitude"], name
    assert_mask_held(net, masks)
    with torch.no_grad():
        assert relative_error(net(x), original(x)) < 0.5


def test_layers_it_cannot_refit_keep_the_magnitude_result_and_are_named():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Conv2d(4, 4, 3)
    ).eval()
    x = smooth((32, 1, 8, 8), 0)
    targets = [(n, m) for n, m in net.named_modules() if isinstance(m, LAYERS)]
    dense = {f"{n}.weight": m.weight.detach().clone() for n, m in targets}
    masks = prune_magnitude(targets, sparsity=0.5, scope="global")
    pruned_first = net[0].weight.detach().clone()
    facts = reconstruct_pruned(net, targets, masks, dense, [(x,)])
    assert facts["not_reconstructed"] == {"0": "padding_mode 'reflect'"}
    assert list(facts["layers"]) == ["2"]
    assert torch.equal(net[0].weight, pruned_first)


RECIPE = """\
version: 1
seed: 0
model: {{path: net.pt, factory: "recmodels:net", python_path: ["."]}}
data:
  calibration: {{path: calibration.npz, labels: null}}
  eval: {{path: eval.npz, labels: null}}
task: regression
runtime: {{threads: 1, latency: {{enabled: false}}}}
stages:
  - prune: {{sparsity: 0.6, reconstruct: {reconstruct}}}
  - export: {{}}
output: {{baseline: baseline.onnx}}
"""

FACTORY = """\
import torch
from torch import nn


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))
"""


def write_project(folder) -> None:
    """FACTORY's module and the state_dict of its seeded net, as the recipe names them."""
    (folder / "recmodels.py").write_text(FACTORY)
    namespace: dict = {}
    exec(FACTORY, namespace)
    torch.save(namespace["net"]().state_dict(), folder / "net.pt")


def without_calibration(recipe: str) -> str:
    return recipe.replace("  calibration: {path: calibration.npz, labels: null}\n", "")


def onnx_outputs(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_prune_stage_refits_on_the_calibration_split_and_says_so(tmp_path):
    write_project(tmp_path)
    x = smooth((160, 1, 8, 8), 0).numpy()
    np.savez(tmp_path / "calibration.npz", x=x[:96])
    np.savez(tmp_path / "eval.npz", x=x[96:])
    errors, reports = {}, {}
    for choice in ("false", "true", "auto"):
        recipe = tmp_path / f"{choice}.yaml"
        recipe.write_text(RECIPE.format(reconstruct=choice))
        result, _ = run_recipe(recipe, tmp_path / choice)
        reports[choice] = result.report["stages"][0]
        held_out = x[96:]
        got = onnx_outputs(tmp_path / choice / "model.onnx", held_out)
        want = onnx_outputs(tmp_path / choice / "baseline.onnx", held_out)
        errors[choice] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    refit = reports["true"]["details"]["reconstruct"]
    assert refit["split"] == "calibration" and refit["samples"] == 96
    assert list(refit["layers"]) == ["0", "2", "6"]
    assert any(note.startswith("reconstructed 3 layers on 96 calibration inputs") for note in
               reports["true"]["notes"])  # fmt: skip
    assert "reconstruct" not in reports["false"]["details"]
    assert reports["auto"]["details"]["reconstruct"]["layers"] == refit["layers"]  # the default
    # the same zeros, a smaller error to the original on the eval inputs
    same = ("nonzero_params", "sparsity")
    assert [reports["true"]["metrics"][k] for k in same] == [
        reports["false"]["metrics"][k] for k in same
    ]
    assert errors["true"] < 0.7 * errors["false"], errors


def test_reconstruct_with_gradual_pruning_is_refused_at_validate_time(tmp_path, run_mcomp):
    (tmp_path / "recmodels.py").write_text(FACTORY)
    (tmp_path / "net.pt").write_bytes(b"")  # validate does not load it
    np.savez(tmp_path / "calibration.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    text = RECIPE.format(reconstruct="true").replace("sparsity: 0.6", "gradual: {steps: 2}")
    (tmp_path / "recipe.yaml").write_text(text)
    result = run_mcomp("validate", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for part in ("recipe.yaml:10:5", "stages[0].prune", "reconstruct", "drop `gradual`"):
        assert part in line, line
    assert "Traceback" not in result.stderr


def test_reconstruct_without_inputs_to_refit_on_exits_2_before_any_work(tmp_path, run_mcomp):
    write_project(tmp_path)
    np.savez(tmp_path / "eval.npz", x=smooth((8, 1, 8, 8), 0).numpy())
    text = without_calibration(RECIPE.format(reconstruct="true"))
    (tmp_path / "recipe.yaml").write_text(text)
    result = run_mcomp("run", "recipe.yaml", "--out", "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "prune.reconstruct" in result.stderr and "data.calibration" in result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_layers_with_fewer_input_vectors_than_weights_are_not_fitted_to_the_samples():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = smooth((40, 64), 0)  # 40 samples: fewer than the first layer's 65 weights per output
    targets = [(n, m) for n, m in net.named_modules() if isinstance(m, LAYERS)]
    dense = {f"{n}.weight": m.weight.detach().clone() for n, m in targets}
    masks = prune_magnitude(targets, sparsity=0.5, scope="global")
    first = net[0].weight.detach().clone()
    facts = reconstruct_pruned(net, targets, masks, dense, [(x,)])
    assert facts["not_reconstructed"] == {"0": "40 input positions for 65 weights per output"}
    assert list(facts["layers"]) == ["2"]  # 40 >= 17
    assert torch.equal(net[0].weight, first)


def test_auto_is_off_without_inputs_and_says_why(tmp_path):
    write_project(tmp_path)
    np.savez(tmp_path / "eval.npz", x=smooth((16, 1, 8, 8), 0).numpy())
    text = without_calibration(RECIPE.format(reconstruct="auto"))
    (tmp_path / "recipe.yaml").write_text(text)
    result, _ = run_recipe(tmp_path / "recipe.yaml", tmp_path / "out")
    details = result.report["stages"][0]["details"]
    assert details["reconstruct"] == "not applied: the recipe gives no calibration or train inputs"
    assert result.report["stages"][0]["metrics"]["sparsity"] > 0.55


@pytest.mark.parametrize("wide", [False, True], ids=["exact", "sparsegpt"])
@pytest.mark.parametrize(
    "make, shape", [(cnn, (2, 8, 8)), (conv1d_net, (1, 64))], ids=["conv2d", "conv1d"]
)
def test_a_mask_chosen_by_the_refit_keeps_the_counts_and_lowers_the_error(
    make, shape, wide, monkeypatch
):
    if wide:
        monkeypatch.setattr(reconstruct, "EXACT_FLOPS", 0)
    calibration, held_out = smooth((128, *shape), 0), smooth((64, *shape), 1)
    nets, facts, masks = {}, {}, {}
    for choose in (False, True):
        net = make()
        original = copy.deepcopy(net)
        targets = [(n, m) for n, m in net.named_modules() if isinstance(m, LAYERS)]
        dense = {f"{n}.weight": m.weight.detach().clone() for n, m in targets}
        masks[choose] = prune_magnitude(targets, sparsity=0.6, scope="global")
        magnitude = {k: v.clone() for k, v in masks[choose].items()}
        batches = [(b,) for b in torch.split(calibration, 16)]
        facts[choose] = reconstruct_pruned(
            net, targets, masks[choose], dense, batches, choose_mask=choose
        )
        nets[choose] = net
        if not choose:
            assert all(torch.equal(masks[choose][k], v) for k, v in magnitude.items())
            continue
        # the same number of zeros in every layer, placed elsewhere in some
        for key, kept in masks[choose].items():
            assert int((~kept).sum()) == int((~magnitude[key]).sum()), key
        moved = [k for k, v in masks[choose].items() if not torch.equal(v, magnitude[k])]
        assert moved
        for key in moved:
            assert facts[choose]["layers"][key.removesuffix(".weight")]["mask"] == (
                "chosen by the refit"
            )
        assert_mask_held(net, masks[choose])
    # each layer took the better of the two masks on the samples: never a larger error
    for name, layer in facts[True]["layers"].items():
        fixed = facts[False]["layers"][name]["error_reconstructed"]
        assert layer["error_reconstructed"] <= fixed + 1e-6, name
    with torch.no_grad():
        errors = {c: relative_error(nets[c](held_out), original(held_out)) for c in nets}
    assert errors[True] < 0.8 * errors[False], errors  # on inputs the refit never saw


def test_the_chosen_mask_is_the_one_training_keeps(tmp_path):
    import onnx
    from onnx import numpy_helper

    write_project(tmp_path)
    x = smooth((160, 1, 8, 8), 0).numpy()
    np.savez(tmp_path / "calibration.npz", x=x[:96])
    np.savez(tmp_path / "eval.npz", x=x[96:])
    base = RECIPE.format(reconstruct="true").replace(
        "reconstruct: true}", "reconstruct: true, reconstruct_mask: refit}"
    )
    base = base.replace("  eval:", "  train: {path: calibration.npz, labels: null}\n  eval:")
    zeros, reports = {}, {}
    for name, extra in (("pruned", ""), ("distilled", "  - distill: {epochs: 2, lr: 0.01}\n")):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(base.replace("  - export: {}\n", extra + "  - export: {}\n"))
        result, _ = run_recipe(recipe, tmp_path / name)
        reports[name] = result.report
        graph = onnx.load(str(tmp_path / name / "model.onnx")).graph
        arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        zeros[name] = {k: arrays[k] == 0 for k in ("0.weight", "2.weight", "6.weight")}
    layers = reports["pruned"]["stages"][0]["details"]["reconstruct"]["layers"]
    assert "chosen by the refit" in {v["mask"] for v in layers.values()}
    distill = reports["distilled"]["stages"][1]
    assert distill["details"]["train_loss"][-1] != distill["details"]["train_loss"][0]
    for key, pattern in zeros["pruned"].items():  # training kept the chosen zeros, no others
        assert np.array_equal(zeros["distilled"][key], pattern), key


def test_a_chosen_mask_gets_the_exact_solver_only_within_its_budget(monkeypatch):
    # a chosen mask may keep more weights in a row than the magnitude mask: the exact
    # solver's cost (rows x widest kept row ^ 3) is checked again on the mask chosen
    generator = torch.Generator().manual_seed(5)
    values = torch.linspace(0.1, 1.0, 48, dtype=torch.float64)
    w0 = torch.stack([values[torch.randperm(48, generator=generator)] for _ in range(16)])
    kept = w0 > values[23]  # every row keeps its 24 largest: the magnitude mask's widest row
    x = smooth((512, 48), 0).double()
    h = x.T @ x
    monkeypatch.setattr(reconstruct, "EXACT_FLOPS", 16 * 24**3)
    fitted, mask, error, solver = reconstruct._fit_groups([(w0, kept, h)], True, 0, choose=False)
    assert solver == "exact" and torch.equal(mask, kept)
    fitted, mask, error, solver = reconstruct._fit_groups([(w0, kept, h)], True, 0, choose=True)
    assert int((~mask).sum()) == int((~kept).sum())  # the same count, placed by saliency
    widest = int(mask.sum(1).max())
    assert widest > 24  # the selection is not uniform across rows
    assert solver == "sparsegpt"  # 16 x widest^3 is over the budget: SparseGPT's own update
    assert not fitted[0][~mask].any()
    monkeypatch.setattr(reconstruct, "EXACT_FLOPS", 16 * widest**3)
    again = reconstruct._fit_groups([(w0, kept, h)], True, 0, choose=True)
    assert again[3] == "exact" and torch.equal(again[1], mask)
    assert again[2] <= error + 1e-9  # the exact refit on the same mask is at least as good
