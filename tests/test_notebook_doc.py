"""The notebook path is an interface: docs/notebook.md's code and the package docstring's example run
as written (offline, synthetic data, a few seconds), so the documentation cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
import torch

import resnet_core

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def docstring_example(doc: str) -> str:
    """The indented block after the first ``::`` of a docstring, dedented."""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    return "\n".join(line.removeprefix("    ") for line in block.splitlines())


@pytest.fixture
def notebook_session(tmp_path, monkeypatch):
    """A fresh folder, a non-interactive plotting backend and one torch thread (what a test may set)."""
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_notebook_md_runs_in_order_and_leaves_records_and_a_figure(notebook_session):
    blocks = python_blocks(NOTEBOOK.read_text(encoding="utf-8"))
    assert len(blocks) >= 4, "docs/notebook.md lost its code blocks"
    namespace: dict = {"__name__": "__notebook__"}
    for line, code in blocks:
        exec(compile(code, f"{NOTEBOOK} (block at line {line})", "exec"), namespace)
    assert len(list((notebook_session / "results" / "runs").glob("*.json"))) == 4
    assert (notebook_session / "curves.png").stat().st_size > 0
    assert set(namespace["curves"]["family"]) == {"residual", "plain"}


def test_a_broken_block_fails_the_doc_test():
    """The extraction finds the code a reader sees, so a block that raises fails the run above."""
    text = "Text.\n\n```python\nx = 1\n```\n\nMore.\n\n```python\nraise RuntimeError('broken')\n```\n"
    blocks = python_blocks(text)
    assert [code for _, code in blocks] == ["x = 1\n", "raise RuntimeError('broken')\n"]
    with pytest.raises(RuntimeError, match="broken"):
        for line, code in blocks:
            exec(compile(code, f"doc (block at line {line})", "exec"), {})


def test_the_package_docstring_example_runs_offline(notebook_session):
    namespace: dict = {}
    exec(compile(docstring_example(resnet_core.__doc__), "resnet_core.__doc__", "exec"), namespace)
    assert namespace["record"].status == "completed"
    assert namespace["record"].config["data"]["source"].startswith("synthetic")
    assert len(namespace["runs"]) == 1 and set(namespace["epochs"]["epoch"]) == {1, 2, 3}
