"""Load a torch.export archive (.pt2) without running code stored in it.

`torch.export.load` (torch 2.13) runs code from the file in four ways, none of which mcomp
allows without `allow_pickle`:

- pickles: `data/sample_inputs/*.pt` goes through `torch.load(weights_only=True)` and, when
  that fails, silently through `torch.load(weights_only=False)`; weights and constants flagged
  `use_pickle` are always loaded with `weights_only=False`; custom and opaque objects with the
  TorchScript unpickler and `pickle.loads`;
- `expr_str` (symbolic sizes) goes through `sympy.sympify`, which evaluates the string;
- `guards_code` is pasted into a function that `exec` defines and the module's forward runs;
- a node's `target` may name any callable reachable from `torch.`, `math.` or `_operator.`
  (`torch.os.system` is one), which the module's forward then calls.

So before torch sees the file, `check_archive` reads it with zipfile: every member's CRC,
every pickled member through the safe unpickler, every expression and guard against a small
grammar, every node target against torch's operators. Then `torch.export.load` runs under a
guard that forces `weights_only=True` and refuses `pickle.loads`, in case a future torch
unpickles a member this check does not know about.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

from mcomp.errors import ModelLoadError
from mcomp.model.pt2_code import code_strings, unsafe_code

OPT_IN = (
    "unpickling or evaluating it runs code stored in the file. If you trust the file, set "
    "`model.allow_pickle: true` in the recipe or pass --allow-pickle"
)
PICKLE_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")  # torchbind objects, plain pickles


def load_exported_program(path: Path, *, allow_pickle: bool):
    """The archive's ExportedProgram; code in it runs only with `allow_pickle`."""
    import torch

    check_archive(path, allow_pickle=allow_pickle)
    if allow_pickle:
        return torch.export.load(str(path))
    with _unpickling_refused():
        try:
            return torch.export.load(str(path))
        except _Refused as exc:
            raise ModelLoadError(
                f"model.path: {path} is a .pt2 archive whose loading wanted to unpickle "
                f"a member ({exc}); {OPT_IN}"
            ) from None


def check_archive(path: Path, *, allow_pickle: bool) -> None:
    """Refuse a damaged archive (CRC) and, without `allow_pickle`, any member that is code."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_crc(archive, path)
            if allow_pickle:
                return
            raw_payloads = _raw_tensor_members(archive)
            for info in archive.infolist():
                name = info.filename
                if name.endswith(".json"):
                    _check_json(archive.read(name), name, path)
                elif name not in raw_payloads:
                    _check_pickled_member(archive.read(name), name, path)
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(
            f"model.path: {path} is a corrupt or truncated archive ({exc}); save it again"
        ) from None


def check_crc(archive: zipfile.ZipFile, path: Path) -> None:
    """Every member's checksum (torch.load does not check them: a flipped byte in a weight
    loads as a wrong weight)."""
    try:
        bad = archive.testzip()
    except Exception as exc:  # zlib.error, EOFError, BadZipFile: a damaged member
        bad = f"? ({type(exc).__name__}: {str(exc)[:100]})"
    if bad is not None:
        raise ModelLoadError(
            f"model.path: {path} is corrupt: member {bad} fails its CRC check (the file was "
            "damaged after it was written); save or copy it again"
        )


def _raw_tensor_members(archive: zipfile.ZipFile) -> set[str]:
    """Members that the archive's payload configs declare as raw tensor bytes (not pickles)."""
    raw = set()
    for name in archive.namelist():
        if not name.endswith(("_weights_config.json", "_constants_config.json")):
            continue
        folder = name.rsplit("/", 1)[0]
        try:
            config = json.loads(archive.read(name)).get("config", {})
        except (ValueError, AttributeError):
            continue  # _check_json reports it
        for entry in config.values():
            if isinstance(entry, dict) and entry.get("use_pickle") is False:
                raw.add(f"{folder}/{entry.get('path_name')}")
    return raw


def _check_pickled_member(data: bytes, name: str, path: Path) -> None:
    """A member that is a pickle (or a torch.save zip) must pass torch's safe unpickler."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith(PICKLE_OBJECT_PREFIXES):
        raise ModelLoadError(
            f"model.path: {path}: archive member {name} is a pickled Python object; {OPT_IN}"
        )
    if not (data.startswith(b"PK\x03\x04") or data[:1] == b"\x80"):
        return  # text (version, byteorder) or other non-pickle bytes
    import pickle

    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        reason = refusal_reason(str(exc))
        raise ModelLoadError(
            f"model.path: {path}: archive member {name} is a pickle that torch's safe "
            f"loader refuses ({reason}); {OPT_IN}"
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"model.path: {path}: archive member {name} cannot be read "
            f"({type(exc).__name__}); the file may be damaged; save it again"
        ) from None


def refusal_reason(text: str) -> str:
    """The line of torch's safe-unpickler error that names what it refused."""
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler error" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")[:200]
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "unpickling refused"


def _check_json(data: bytes, name: str, path: Path) -> None:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ModelLoadError(
            f"model.path: {path}: archive member {name} is not valid JSON ({exc}); "
            "the file may be damaged"
        ) from None
    for kind, text in code_strings(document):
        problem = unsafe_code(kind, text)
        if problem is not None:
            raise ModelLoadError(
                f"model.path: {path}: archive member {name} holds a {kind} {text[:80]!r} "
                f"that is not plain torch.export output ({problem}); {OPT_IN}"
            )


class _Refused(BaseException):
    """torch.export.load tried to unpickle something unsafe while the guard was on (a
    BaseException: torch retries failed loads under `except Exception`, which must not
    swallow it)."""


@contextlib.contextmanager
def _unpickling_refused() -> Iterator[None]:
    """While torch loads the archive: every torch.load is weights_only=True, and the plain
    and TorchScript unpicklers refuse."""
    import pickle

    import torch

    real_load, real_loads = torch.load, pickle.loads
    real_script_load = getattr(torch._C, "_pickle_load_obj", None)

    def safe_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(f, *args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise _Refused(refusal_reason(str(exc))) from None

    def refuse(*args, **kwargs):
        raise _Refused("a pickled Python object")

    torch.load, pickle.loads = safe_load, refuse
    if real_script_load is not None:
        torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads = real_load, real_loads
        if real_script_load is not None:
            torch._C._pickle_load_obj = real_script_load
