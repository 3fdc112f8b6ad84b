"""The package's public surface is exactly what ``__all__`` says."""

from __future__ import annotations

import ast
from pathlib import Path

import kindlessh

PACKAGE = Path(kindlessh.__file__).parent


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(kindlessh) if not name.startswith("_")}
    assert set(kindlessh.__all__) == public | {"__version__"}


def _is_scroll_sequence(call: ast.Call) -> bool:
    """``write_raw(scroll_sequence(...))``: the one raw write allowed, of numbers only."""
    if len(call.args) != 1 or call.keywords:
        return False
    arg = call.args[0]
    return isinstance(arg, ast.Call) and getattr(arg.func, "id", "") == "scroll_sequence"


def test_no_module_writes_untrusted_text_through_raw_paths() -> None:
    """Untrusted text reaches the screen only through ``_view`` (sanitised fragments)."""
    banned = {"ANSI", "print_formatted_text", "write_raw", "HTML"}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "write_raw" and _is_scroll_sequence(node):
                    continue  # numbers only: see _paint.scroll_sequence
                assert name not in banned, f"{path.name}:{node.lineno} calls {name}()"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "ZeroWidthEscape" not in node.value, f"{path.name}:{node.lineno}"


def test_no_print_in_the_package() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
                raise AssertionError(f"{path.name}:{node.lineno} uses print()")
