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

import ast
import contextlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcomp.errors import ModelLoadError

OPT_IN = (
    "unpickling or evaluating it runs code stored in the file. If you trust the file, set "
    "`model.allow_pickle: true` in the recipe or pass --allow-pickle"
)
PICKLE_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")  # torchbind objects, plain pickles

# sympy names that torch's serializer writes (srepr of sizes and torch's own sympy functions)
SYMPY_NAMES = frozenset({
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Half", "One", "Zero", "NegativeOne",
    "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "oo", "zoo",
    "nan", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor", "ceiling", "sqrt",
    "Piecewise", "ExprCondPair", "Tuple", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality",
    "Unequality", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And",
    "Or", "Not", "Xor", "BooleanTrue", "BooleanFalse", "true", "false", "FloorDiv",
    "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity",
})  # fmt: skip
GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
GUARD_NAMES = frozenset({"L", "math", "inf"}) | SYMPY_NAMES
MATH_FUNCTIONS = frozenset({"floor", "ceil", "trunc", "sqrt", "isnan", "isinf", "inf"})
SAFE_OPERATOR = frozenset({
    "getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub",
    "floordiv", "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift", "not_", "abs",
    "invert", "xor",
})  # fmt: skip
SAFE_TORCH = frozenset({
    "sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt",
    "sym_sum", "_sym_sqrt",
})  # fmt: skip
NAME = re.compile(r"^[A-Za-z_]\w*$")
NUMBER_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$")
ARITHMETIC = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
    ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift, ast.Invert, ast.Not,
    ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip


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
    for kind, text in _code_strings(document):
        problem = _unsafe_code(kind, text)
        if problem is not None:
            raise ModelLoadError(
                f"model.path: {path}: archive member {name} holds a {kind} {text[:80]!r} "
                f"that is not plain torch.export output ({problem}); {OPT_IN}"
            )


def _code_strings(document: Any) -> Iterator[tuple[str, str]]:
    """(kind, text) of every string torch would evaluate, execute or resolve to a callable.
    Iterative: a deeply nested document must not exhaust Python's stack."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "expr_str" and isinstance(value, str):
                    yield "symbolic expression", value
                elif key == "guards_code" and isinstance(value, list):
                    yield from (("guard", g if isinstance(g, str) else repr(g)) for g in value)
                elif key == "target" and isinstance(value, str) and "inputs" in node:
                    yield "node target", value
                else:
                    stack.append(value)


def _unsafe_code(kind: str, text: str) -> str | None:
    if kind == "node target":
        return _unsafe_target(text)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return "it does not parse"
    check = _unsafe_sympy_node if kind == "symbolic expression" else _unsafe_guard_node
    for node in ast.walk(tree):
        problem = check(node)
        if problem is not None:
            return problem
    return None


def _unsafe_sympy_node(node: ast.AST) -> str | None:
    if isinstance(node, (ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.Tuple)):
        return None
    if isinstance(node, ARITHMETIC):
        return None
    if isinstance(node, ast.Call):
        ok = isinstance(node.func, ast.Name) and node.func.id in SYMPY_NAMES
        return None if ok else "a call of something other than a sympy function"
    if isinstance(node, ast.Name):
        return None if node.id in SYMPY_NAMES else f"the name {node.id!r}"
    if isinstance(node, ast.keyword):
        ok = node.arg is not None and NAME.match(node.arg) and isinstance(node.value, ast.Constant)
        return None if ok else "a keyword argument that is not an assumption"
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            ok = NAME.match(value) or NUMBER_TEXT.match(value)
            return None if ok else "a string that is not a symbol name"
        return None if isinstance(value, (bool, int, float)) or value is None else "a constant"
    return f"Python syntax {type(node).__name__}"


def _unsafe_guard_node(node: ast.AST) -> str | None:
    if isinstance(node, (ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp)):
        return None
    if isinstance(node, (ast.Compare, ast.Subscript, ast.Tuple, *ARITHMETIC)):
        return None
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in SYMPY_NAMES:
            return None
        if isinstance(func, ast.Attribute):
            return None  # the attribute itself is checked below
        return "a call of something other than a size method or a sympy function"
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "math":
            return None if node.attr in MATH_FUNCTIONS else f"math.{node.attr}"
        return None if node.attr in GUARD_METHODS else f"the attribute {node.attr!r}"
    if isinstance(node, ast.Name):
        return None if node.id in GUARD_NAMES else f"the name {node.id!r}"
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            return None if NAME.match(value) else "a string that is not an input name"
        return None if isinstance(value, (bool, int, float)) or value is None else "a constant"
    return f"Python syntax {type(node).__name__}"


def _unsafe_target(text: str) -> str | None:
    """torch's deserializer turns the target into `torch.<a>.<b>`, `math.<x>`,
    `_operator.<x>` by getattr; only operators (and symbolic-size helpers) may come out."""
    if text.startswith("#"):
        return None  # an extension op: resolved through torch's registry of handlers only
    parts = text.split(".")
    if parts[0] == "_operator":
        return None if len(parts) == 2 and parts[1] in SAFE_OPERATOR else "not an operator"
    if parts[0] == "math":
        return None if len(parts) == 2 and parts[1] in MATH_FUNCTIONS else "not an operator"
    if not text.startswith("torch"):
        return None  # torch keeps an unknown target as a string, which fails to deserialize
    if len(parts) == 2 and parts[1] in SAFE_TORCH:
        return None
    if len(parts) < 3 or parts[0] != "torch" or parts[1] != "ops":
        return "not a torch operator (torch.ops.*)"
    import torch

    target: Any = torch.ops
    for part in parts[2:]:
        if not NAME.match(part) or part.startswith("__"):
            return "not a torch operator"
        try:
            target = getattr(target, part)
        except (AttributeError, RuntimeError):
            return None  # unknown op: torch fails on it without calling anything
    ops = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    return None if isinstance(target, ops) else "not a torch operator"


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
