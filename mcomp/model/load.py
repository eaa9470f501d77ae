"""Load a model file into a `ModelState`, detecting the format from the content.

Formats: a state_dict plus a `package.module:function` factory (loaded `weights_only=True`),
a `torch.export` ExportedProgram (.pt2), TorchScript, an ONNX file, and — only with an explicit
opt-in, because unpickling runs code from the file — a whole pickled module.
"""

from __future__ import annotations

import importlib.resources
import warnings
import zipfile
from pathlib import Path

from mcomp.errors import MCompError, ModelLoadError
from mcomp.factory import factory_paths, import_factory, user_code
from mcomp.model.module_names import WRAPPER_PREFIXES, strip_wrapper_prefix
from mcomp.model.state import ModelState
from mcomp.model.tensor_types import onnx_inputs
from mcomp.paths import check_regular_file
from mcomp.recipe.schema import InputSpec, ModelFormat, ModelSpec

PICKLE_REFUSED = (
    "{path} holds a pickle that torch's safe loader refuses ({reason}); unpickling it runs "
    "code stored in the file. If you trust the file, set `model.allow_pickle: true` in the "
    "recipe or pass --allow-pickle. Safer: save `model.state_dict()` and name its "
    "`model.factory`, or save a .pt2 with torch.export.save"
)


def load_model(spec: ModelSpec, *, base_dir: Path, allow_pickle: bool = False) -> ModelState:
    """Load the model the recipe names; `inputs` may be empty until `resolve_inputs` runs."""
    if spec.builtin is not None:
        return _builtin(spec.builtin)
    if spec.path is None:  # the schema allows this only with a factory
        return _from_factory(spec, base_dir)
    path = (base_dir / (spec.path or "")).resolve()
    check_regular_file(path, "model.path", ModelLoadError, "model file")
    allow_pickle = allow_pickle or spec.allow_pickle
    fmt = spec.format if spec.format != ModelFormat.AUTO else detect_format(path)
    loaders = {
        ModelFormat.ONNX: lambda: _load_onnx(path),
        ModelFormat.EXPORTED_PROGRAM: lambda: _load_exported_program(path, allow_pickle),
        ModelFormat.TORCHSCRIPT: lambda: _load_torchscript(path),
        ModelFormat.STATE_DICT: lambda: _load_torch_file(path, spec, allow_pickle),
        ModelFormat.PICKLE: lambda: _load_torch_file(path, spec, allow_pickle),
    }
    try:
        state = loaders[fmt]()
    except MCompError:  # already says what to fix (e.g. a factory that does not import)
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"model.path: cannot load {path} as {fmt} ({_describe(exc)}); "
            "the file may be corrupt or truncated"
        ) from None
    state.source = str(path)
    return state


def _describe(exc: BaseException) -> str:
    """`Type: first line of the message`, or just the type when the message is empty."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def detect_format(path: Path) -> ModelFormat:
    """Tell the model format from the file's bytes, not its extension."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK\x03\x04"):
        return archive_format(path)
    if head[:1] == b"\x80":  # a legacy (non-zip) torch.save pickle
        return ModelFormat.STATE_DICT
    if _looks_like_onnx(path):
        return ModelFormat.ONNX
    raise ModelLoadError(
        f"model.path: {path} is not a model file mcomp knows (torch state_dict, "
        ".pt2, TorchScript, pickled module or ONNX), or it is corrupt"
    )


def archive_format(path: Path) -> ModelFormat:
    """The format of a torch zip archive from its member names, without loading it (no
    torch import: `mcomp validate` uses it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise ModelLoadError(
            f"model.path: {path} is a corrupt or truncated torch archive; save it again"
        ) from None
    if any(n.endswith(("models/model.json", "serialized_exported_program.json")) for n in names):
        return ModelFormat.EXPORTED_PROGRAM
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return ModelFormat.TORCHSCRIPT
    return ModelFormat.STATE_DICT


def _looks_like_onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return len(model.graph.node) > 0


def _builtin(name: str) -> ModelState:
    """A model shipped in `mcomp.models`: its factory and its trained weights `NAME.pt`."""
    import torch

    module = getattr(importlib.import_module(f"mcomp.models.{name}"), name)()
    weights = importlib.resources.files("mcomp.models").joinpath(f"{name}.pt")
    with importlib.resources.as_file(weights) as path:
        module.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return ModelState.from_torch(module.eval(), [], source=f"builtin:{name}")


def _load_torch_file(path: Path, spec: ModelSpec, allow_pickle: bool) -> ModelState:
    import pickle

    import torch

    from mcomp.model.pt2 import check_crc, refusal_reason

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            check_crc(archive, path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        # The safe unpickler says "Weights only load failed" when it refused a global; any
        # other failure is a damaged file, which --allow-pickle would not mend.
        if "Weights only load failed" not in str(exc):
            raise ModelLoadError(
                f"model.path: {path} is a corrupt or truncated torch file "
                "(torch.load failed to unpickle it); save it again"
            ) from None
        if not allow_pickle:
            reason = refusal_reason(str(exc))
            raise ModelLoadError(
                "model.path: " + PICKLE_REFUSED.format(path=path, reason=reason)
            ) from None
        obj = _unpickle_trusted(path)
    if isinstance(obj, torch.nn.Module):
        return ModelState.from_torch(obj.eval(), [])
    if not isinstance(obj, dict):
        raise ModelLoadError(
            f"model.path: {path} holds a {type(obj).__name__}, not a state_dict or a module"
        )
    if not spec.factory:
        raise ModelLoadError(
            f"model.path: {path} is a state_dict; name the function that builds "
            "the module with `model.factory: package.module:function`"
        )
    module = _build(spec, spec.factory_args)
    state_dict = obj.get("state_dict", obj) if "state_dict" in obj else obj
    state_dict = _without_wrapper_prefixes(state_dict, module)
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]  # the first line alone names no parameter
        raise ModelLoadError(
            f"model.path: {path} does not fit the module from {spec.factory}: "
            f"{detail} (check `model.factory_args`)"
        ) from None
    return ModelState.from_torch(module.eval(), [])


def _build(spec: ModelSpec, args: dict):
    """The module `model.factory` returns for `args`."""
    import torch

    build = import_factory(spec.factory, key="model.factory")
    try:
        with user_code():
            module = build(**args)
    except Exception as exc:
        raise ModelLoadError(
            f"model.factory: calling {spec.factory} with model.factory_args "
            f"{spec.factory_args} failed ({_describe(exc)}); check "
            "`model.factory_args`"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"model.factory: {spec.factory} returned a {type(module).__name__}, "
            "not a torch.nn.Module"
        )
    return module


def _from_factory(spec: ModelSpec, base_dir: Path) -> ModelState:
    """A model that `model.factory` loads itself (no `path`: e.g. a Hugging Face
    `from_pretrained`)."""
    args = factory_paths(
        spec.factory_args, base_dir, key="model.factory_args", error=ModelLoadError
    )
    module = _build(spec, args)
    return ModelState.from_torch(module.eval(), [], source=f"factory:{spec.factory}")


def _without_wrapper_prefixes(state_dict: dict, module) -> dict:
    """A state dict saved from a wrapped model (DataParallel/DDP: `module.conv1.weight`,
    torch.compile: `_orig_mod.conv1.weight`) with the wrapper's prefixes removed, when every
    key carries one and the bare module's own keys do not; otherwise as it is."""
    own = module.state_dict().keys()
    wrapped = all(isinstance(k, str) and k.startswith(WRAPPER_PREFIXES) for k in state_dict)
    if not state_dict or not wrapped or any(k.startswith(WRAPPER_PREFIXES) for k in own):
        return state_dict
    return {strip_wrapper_prefix(key): value for key, value in state_dict.items()}


def _unpickle_trusted(path: Path):
    """The whole pickle, allowed by the user; its classes must import."""
    import torch

    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"model.path: {path} is a pickle of a class that does not import here "
            f"({_describe(exc)}); add the folder of its module to `model.python_path` "
            "(--python-path)"
        ) from None


def _load_exported_program(path: Path, allow_pickle: bool) -> ModelState:
    import torch

    from mcomp.model.pt2 import load_exported_program

    program = load_exported_program(path, allow_pickle=allow_pickle)
    inputs = []
    args = program.example_inputs[0] if program.example_inputs else ()
    names = [
        s.arg.name
        for s in program.graph_signature.input_specs
        if s.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    for name, tensor in zip(names, args, strict=False):
        if isinstance(tensor, torch.Tensor):
            inputs.append(
                InputSpec(
                    name=name,
                    shape=list(tensor.shape[1:]),
                    dtype=str(tensor.dtype).removeprefix("torch."),
                )
            )
    # torch.export specialises every dimension not declared dynamic; a fixed batch axis makes
    # the module reject any other batch size with a bare "Guard failed" assertion mid-run.
    fixed = {
        node.name: node.meta["val"].shape[0]
        for node in program.graph.nodes
        if node.op == "placeholder"
        and node.name in names
        and isinstance(node.meta.get("val"), torch.Tensor)
        and node.meta["val"].dim() > 0
        and isinstance(node.meta["val"].shape[0], int)
    }
    if fixed:
        raise ModelLoadError(
            f"model.path: {path} was exported with a fixed batch size "
            f"({', '.join(f'{k}: {v}' for k, v in fixed.items())}); mcomp runs "
            "batches of any size: export it again with a dynamic batch axis, "
            "e.g. dynamic_shapes=({0: torch.export.Dim('batch')},) for one input"
        )
    return ModelState.from_torch(program.module(), inputs)


def _load_torchscript(path: Path) -> ModelState:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in 2.13 but still loads
        module = torch.jit.load(str(path), map_location="cpu")
    return ModelState.from_torch(module.eval(), [])


def _load_onnx(path: Path) -> ModelState:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(
            f"model.path: {path} is not a valid ONNX model ({str(exc).splitlines()[0][:200]})"
        ) from None
    return ModelState.from_onnx(model, onnx_inputs(model))
