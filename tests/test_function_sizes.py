"""The packages stay made of short functions: none over 80 lines but the argparse declarations
of the commands (one `add_argument` call per option, however many options there are), and no
closure over 30 (a longer one is a class or a module function waiting to be named)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cnnzoo", "zoo", "serving", "interpret")
LONGEST_FUNCTION, LONGEST_CLOSURE = 80, 30

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.AST, inside: bool = False):
    """(function, whether it is nested in another function) for every function in `tree`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, Function):
            yield node, inside
            yield from _functions(node, True)
        else:
            yield from _functions(node, inside)


def _declares_arguments(function: Function) -> bool:
    """Most of its statements are `parser.add_argument(...)` calls."""
    calls = [
        s
        for s in function.body
        if isinstance(s, ast.Expr)
        and isinstance(s.value, ast.Call)
        and isinstance(s.value.func, ast.Attribute)
        and s.value.func.attr == "add_argument"
    ]
    return len(calls) * 2 >= len(function.body)


def test_no_long_functions_or_closures():
    too_long = []
    paths = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    for path in paths:
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for function, nested in _functions(ast.parse(path.read_text())):
            lines = function.end_lineno - function.lineno + 1
            limit = LONGEST_CLOSURE if nested else LONGEST_FUNCTION
            if lines > limit and not _declares_arguments(function):
                where = f"{path.relative_to(ROOT)}:{function.lineno}"
                too_long.append(f"{where} {function.name}: {lines} lines (limit {limit})")
    assert not too_long, "\n".join(too_long)


def test_the_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST_FUNCTION))
    (function, nested), *_ = _functions(ast.parse(f"def f():\n{body}\n"))
    assert function.end_lineno - function.lineno + 1 > LONGEST_FUNCTION and not nested
    assert not _declares_arguments(function)
