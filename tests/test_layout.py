"""The shape of the package: no module grows past what one reader can hold (issue 11), and imports
go one way (issue 28): no circle, not even through a function-level or TYPE_CHECKING import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resnet_core"
MAX_LINES = 500
MAX_COMMAND_LINES = 400  # commands/ and grid/: flag adapters and the grid layer stay short
# What a run imports never reaches the layers built on it: a fit knows no grid, study or worker pool.
ABOVE_FIT = ("resnet_core.commands", "resnet_core.study", "resnet_core.grid", "resnet_core.runner",
             "resnet_core.dask_runner")


def test_no_module_in_resnet_core_exceeds_500_lines():
    sizes = {str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
             for path in sorted(PACKAGE.rglob("*.py"))}
    assert len(sizes) > 10  # the package was found
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concern): {too_long}"


def test_study_modules_import_only_modules_above_them():
    """The study package has no import cycles: each module imports study modules listed before it."""
    order = ["common", "space", "urls", "journal", "recovery", "storage", "pruners", "spec", "search", "objective", "workers",
             "final", "outcome", "compare", "plan", "estimate", "rungs", "importance", "tables", "figures", "report", "experiment"]
    assert sorted(order) == sorted(p.stem for p in (PACKAGE / "study").glob("*.py") if p.stem != "__init__")
    for index, name in enumerate(order):
        text = (PACKAGE / "study" / f"{name}.py").read_text(encoding="utf-8")
        imported = {line.split()[1].rsplit(".", 1)[-1] for line in text.splitlines()
                    if line.startswith("from resnet_core.study.")}
        imported |= {line.split()[3] for line in text.splitlines() if line.startswith("from resnet_core.study import")}
        assert imported <= set(order[:index]), f"study/{name}.py imports {sorted(imported - set(order[:index]))}"


def test_no_module_in_commands_or_grid_exceeds_400_lines():
    paths = [p for folder in ("commands", "grid") for p in sorted((PACKAGE / folder).glob("*.py"))]
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines()) for p in paths}
    assert sizes  # commands/ was found
    too_long = {name: lines for name, lines in sizes.items()
                if lines > MAX_COMMAND_LINES}
    assert not too_long, f"modules over {MAX_COMMAND_LINES} lines (move the logic into the library): {too_long}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_source(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from ... import`` reads from, relative imports resolved."""
    if not node.level:
        return str(node.module)
    package = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))


def module_imports(text: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ``modules`` that ``text`` imports anywhere: at the top, inside functions, under ``if
    TYPE_CHECKING``. ``from package import name`` imports the submodule ``name`` where there is one,
    else the package. (A parent package, run before any of its submodules, is not counted: a package
    that imports its submodules would otherwise be a circle with each of them. Nor is what an
    ``if __name__ == "__main__":`` block imports: it runs only as ``python -m module``, an entry point.)"""
    found: set[str] = set()
    tree = ast.parse(text)
    entry = {id(n) for block in tree.body if _is_main_block(block) for n in ast.walk(block)}
    for node in (n for n in ast.walk(tree) if id(n) not in entry):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = import_source(node, module, is_package)
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules
            found |= submodules | ({source} if len(submodules) < len(node.names) else set())
    return (found & modules) - {module}


def _is_main_block(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` at a module's top level."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def import_graph() -> dict[str, set[str]]:
    """Every resnet_core module -> the resnet_core modules it imports (:func:`module_imports`)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {module: module_imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", set(paths))
            for module, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (its modules in order, the first repeated at the end), or [] if none."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return []
        for imported in sorted(graph[module]):
            cycle = visit(imported, path + [module])
            if cycle:
                return cycle
        done.add(module)
        return []

    return next((cycle for module in sorted(graph) if (cycle := visit(module, []))), [])


def test_the_layout_checks_find_a_circle_through_any_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    text = ("from typing import TYPE_CHECKING\nfrom resnet_core.study import figures as sf, plan\n"
            "from .spec import StudySpec\nif TYPE_CHECKING:\n    from resnet_core.engine import Trainer\n"
            "def f():\n    import resnet_core.bench\n    from resnet_core import study\n"
            "if __name__ == '__main__':\n    from resnet_core.commands import parsers\n")
    modules = {"resnet_core", "resnet_core.study", "resnet_core.study.figures", "resnet_core.study.spec",
               "resnet_core.study.report", "resnet_core.engine", "resnet_core.bench"}
    assert module_imports(text, "resnet_core.study.report", False, modules) == {
        "resnet_core.study.figures", "resnet_core.study", "resnet_core.study.spec", "resnet_core.engine",
        "resnet_core.bench"}


def test_no_import_circle_between_resnet_core_modules():
    graph = import_graph()
    assert {"resnet_core.config", "resnet_core.study", "resnet_core.study.plan", "resnet_core.commands.study"} \
        <= set(graph)
    cycle = find_cycle(graph)
    assert not cycle, f"import circle (top-level, function-level or TYPE_CHECKING imports): {' -> '.join(cycle)}"


def test_a_run_imports_nothing_of_the_layers_built_on_it():
    graph = import_graph()
    reached, todo = set(), ["resnet_core.engine", "resnet_core.fused_fit"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    upward = sorted(m for m in reached if m.startswith(ABOVE_FIT))
    assert not upward, f"engine.py / fused_fit.py reach modules built on them: {upward}"
