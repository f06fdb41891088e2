"""The code's shape, kept: functions in src/ short enough to read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import sonicgate

MAX_FUNCTION_LINES = 60
SOURCE = Path(sonicgate.__file__).parent


def test_no_function_over_sixty_lines() -> None:
    long = [
        f"{path.relative_to(SOURCE)}:{node.lineno} {node.name} ({length} lines)"
        for path in sorted(SOURCE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, "split these functions:\n" + "\n".join(long)
