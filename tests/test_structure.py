"""The house rules, checked: who may import whom, how big a module or function may grow, nothing written twice.

Read from the source as text (``ast``), so a rule broken in a module no test
imports still fails the build. Imports under ``if TYPE_CHECKING:`` never run
and do not count.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each importable package lives (pyproject's package-dir).
PACKAGE_DIRS = {
    "visionpipe": ROOT / "shared" / "visionpipe",
    "visionpipe.services": ROOT / "services",
    "visionpipe.loadgen": ROOT / "loadgen",
}
RUNTIME_DIRS = (ROOT / "shared", ROOT / "services")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
DUPLICATE_RUN = 10  # lines

# (importer prefix, forbidden import prefixes)
FORBIDDEN = [
    ("visionpipe.executor", ("visionpipe.broker", "visionpipe.services", "visionpipe.loadgen")),
    ("visionpipe.broker", ("visionpipe.executor", "visionpipe.services", "visionpipe.loadgen")),
    ("visionpipe.services", ("visionpipe.loadgen",)),
]
# Leaves of the core: they import nothing else of ours.
LEAVES = ("visionpipe.envelope", "visionpipe.settings", "visionpipe.topology")


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the three package folders."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "visionpipe" and parts and parts[0] in ("services", "loadgen"):
                continue
            out[name] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, module: str) -> set[str]:
    """Every visionpipe module ``path`` imports at run time, top level or inside functions."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the module's package
                pkg = module.rsplit(".", node.level)[0]
                base = f"{pkg}.{base}" if base else pkg
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name == "visionpipe" or name.startswith("visionpipe.")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_layers_import_only_downwards() -> None:
    broken = []
    for name, path in modules().items():
        imported = imports_of(path, name)
        for importer, forbidden in FORBIDDEN:
            if _within(name, importer):
                broken += [f"{name} imports {i}" for i in imported for f in forbidden if _within(i, f)]
        if name in LEAVES:
            broken += [f"{name} imports {i}" for i in imported if i not in ("visionpipe", name)]
        if path.is_relative_to(ROOT / "shared"):
            broken += [
                f"{name} imports {i}"
                for i in imported
                if _within(i, "visionpipe.services") or _within(i, "visionpipe.loadgen")
            ]
    assert not broken, "\n".join(sorted(broken))


def _runtime_files() -> list[Path]:
    return sorted(p for d in RUNTIME_DIRS for p in d.rglob("*.py"))


def test_modules_and_functions_stay_small() -> None:
    too_big = []
    for path in _runtime_files():
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not too_big, "\n".join(too_big)


_SKIP = re.compile(r"^(#|import |from \S+ import |[\s()\[\]{},:]*$)")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text with white space folded) of lines that carry code: no blanks, comments, imports."""
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = " ".join(raw.split())
        if line and not _SKIP.match(line):
            out.append((number, line))
    return out


def test_no_code_is_written_twice_in_the_runtime_packages() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in _runtime_files():
        lines = _code_lines(path)
        for i in range(len(lines) - DUPLICATE_RUN + 1):
            window = "\n".join(text for _, text in lines[i : i + DUPLICATE_RUN])
            digest = hashlib.sha1(window.encode()).hexdigest()
            seen[digest].append(f"{path.relative_to(ROOT)}:{lines[i][0]}")
    twice = [places for places in seen.values() if len(places) > 1]
    assert not twice, "the same run of lines in: " + "; ".join(", ".join(p) for p in twice[:5])


@pytest.mark.parametrize("leaf", LEAVES)
def test_every_leaf_module_exists(leaf: str) -> None:
    assert leaf in modules()
