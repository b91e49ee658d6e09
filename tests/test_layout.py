"""The shape of the package: no module grows past what one reader can hold (issue 11)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resnet_core"
MAX_LINES = 500


def test_no_module_in_resnet_core_exceeds_500_lines():
    sizes = {str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
             for path in sorted(PACKAGE.rglob("*.py"))}
    assert len(sizes) > 10  # the package was found
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concern): {too_long}"


def test_study_modules_import_only_modules_above_them():
    """The study package has no import cycles: each module imports study modules listed before it."""
    order = ["common", "space", "urls", "journal", "recovery", "storage", "pruners", "spec", "search", "objective", "workers",
             "final", "outcome", "compare", "plan", "rungs", "importance", "tables", "figures", "report"]
    assert sorted(order) == sorted(p.stem for p in (PACKAGE / "study").glob("*.py") if p.stem != "__init__")
    for index, name in enumerate(order):
        text = (PACKAGE / "study" / f"{name}.py").read_text(encoding="utf-8")
        imported = {line.split()[1].rsplit(".", 1)[-1] for line in text.splitlines()
                    if line.startswith("from resnet_core.study.")}
        imported |= {line.split()[3] for line in text.splitlines() if line.startswith("from resnet_core.study import")}
        assert imported <= set(order[:index]), f"study/{name}.py imports {sorted(imported - set(order[:index]))}"
