"""The package's public surface is exactly what ``__all__`` says."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from pathlib import Path

import kindlessh
from kindlessh import _errors
from kindlessh._errors import KindleSSHError

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


def _exception_classes() -> list[tuple[str, int, type[BaseException] | None, list[str]]]:
    """Every class defined in the package that derives from an exception: its module,
    line, the class itself (None when it is not reachable at module level) and the
    names of its bases."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # importing it would run the command line
            continue
        module_name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = importlib.import_module(module_name)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = vars(module).get(node.name)
            bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
            if isinstance(cls, type) and getattr(cls, "__module__", "") == module_name:
                if issubclass(cls, BaseException):
                    found.append((path.name, node.lineno, cls, bases))
            elif any(isinstance(getattr(builtins, b, None), type) and issubclass(
                getattr(builtins, b), BaseException) for b in bases):  # fmt: skip
                found.append((path.name, node.lineno, None, bases))
    return found


def test_every_exception_is_in_the_one_tree() -> None:
    """Every exception class of the package is defined in _errors and is a KindleSSHError,
    so a caller can catch them all, and each has a message meant for a person."""
    found = _exception_classes()
    assert len(found) >= 20  # the walk sees the tree itself
    for filename, line, cls, bases in found:
        where = f"{filename}:{line} ({', '.join(bases)})"
        assert filename == "_errors.py", f"an exception outside _errors: {where}"
        assert cls is not None and issubclass(cls, KindleSSHError), where


def test_the_tree_drawing_names_every_error() -> None:
    drawn = _errors.__doc__ or ""
    for _, _, cls, _ in _exception_classes():
        assert cls is not None and re.search(rf"^ *{cls.__name__}\b", drawn, re.M), cls
