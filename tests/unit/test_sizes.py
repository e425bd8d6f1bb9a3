"""Size limits of the house rules: no module over 450 lines and no function over 80 lines in include/ and plugins/."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("include", "plugins")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Offender:
    """One module or function over its limit."""

    path: str
    line: int
    name: str  # "" for the module itself
    lines: int

    def __str__(self) -> str:
        if self.name:
            return f"{self.path}:{self.line} {self.name}() is {self.lines} lines (limit {MAX_FUNCTION_LINES})"
        return f"{self.path} is {self.lines} lines (limit {MAX_MODULE_LINES})"


def python_files(root: Path) -> list[Path]:
    """Every ``.py`` file under ``root``, ``__pycache__`` folders skipped."""
    return sorted(path for path in root.rglob("*.py") if "__pycache__" not in path.parts)


def offenders(path: Path, relative_to: Path, *, max_module: int = MAX_MODULE_LINES,
              max_function: int = MAX_FUNCTION_LINES) -> list[Offender]:
    """The module itself when it is over ``max_module`` lines, and every function (nested ones and methods
    included) over ``max_function`` lines, decorators and docstring counted."""
    source = path.read_text(encoding="utf-8")
    name = path.relative_to(relative_to).as_posix()
    found = []
    n_lines = len(source.splitlines())
    if n_lines > max_module:
        found.append(Offender(name, 1, "", n_lines))
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - first + 1
            if length > max_function:
                found.append(Offender(name, node.lineno, node.name, length))
    return found


def scan(root: Path, folders: tuple[str, ...] = SCANNED) -> list[Offender]:
    """Offenders in every Python file under ``root/<folder>`` for each folder."""
    return [found for folder in folders for path in python_files(root / folder) for found in offenders(path, root)]


def test_no_module_or_function_over_the_limits():
    found = scan(REPO_ROOT)
    assert not found, f"{len(found)} over the size limits:\n" + "\n".join(map(str, found))


def test_the_scan_covers_the_packages():
    files = [path.relative_to(REPO_ROOT).as_posix() for folder in SCANNED for path in python_files(REPO_ROOT / folder)]
    assert "include/evertune/config.py" in files and "plugins/evertune_airflow/__init__.py" in files


def test_scanner_finds_an_oversized_function_and_module(tmp_path: Path):
    package = tmp_path / "include" / "pkg"
    (package / "__pycache__").mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (package / "long.py").write_text(f"import functools\n\n\n@functools.cache\ndef too_long():\n{body}\n")
    (package / "fine.py").write_text("def short():\n    return 1\n")
    (package / "big.py").write_text("\n".join(f"X{i} = {i}" for i in range(451)) + "\n")
    (package / "__pycache__" / "skipped.py").write_text("\n" * 1000)
    found = scan(tmp_path, ("include",))
    assert [(o.path, o.name, o.lines) for o in found] == [
        ("include/pkg/big.py", "", 451),
        ("include/pkg/long.py", "too_long", 82),  # decorator + def line + 80 body lines
    ]
    assert "include/pkg/long.py:5 too_long() is 82 lines (limit 80)" == str(found[1])
    assert not offenders(package / "fine.py", tmp_path)


def test_scanner_finds_nested_functions_and_methods(tmp_path: Path):
    body = "\n".join(f"            y{i} = {i}" for i in range(81))
    (tmp_path / "m.py").write_text(f"class C:\n    def method(self):\n        def inner():\n{body}\n")
    assert [o.name for o in offenders(tmp_path / "m.py", tmp_path)] == ["method", "inner"]
