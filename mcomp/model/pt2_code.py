"""Which strings in a .pt2's JSON members are code, and whether each is the plain output of
torch.export (see mcomp.model.pt2): symbolic sizes are parsed by `sympy.sympify` (Python's
`eval`), guards are `exec`ed, node targets are resolved to callables by getattr.

Each string is parsed with `ast` and every node checked against a small grammar: sympy
functions, symbol names and numbers for expressions; input sizes, comparisons and arithmetic
for guards; torch operators for targets. No string is ever evaluated here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any

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


def code_strings(document: Any) -> Iterator[tuple[str, str]]:
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


def unsafe_code(kind: str, text: str) -> str | None:
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
