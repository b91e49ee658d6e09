"""Progress bars: the one place that decides whether a bar is drawn.

A bar is drawn on a terminal (and as a widget in Jupyter, where tqdm.auto picks its notebook bar).
Without a terminal (output piped to a file, a batch system's log) tqdm's redraws would land in the
log as repeated lines, so there it draws nothing: ``disable=None`` is tqdm's own "only on a TTY".
"""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool = True, **options: Any):
    """A tqdm bar (``options`` as tqdm takes them) drawn only on a terminal; ``enabled=False``
    (``--quiet``) never draws. A bar that is not drawn still counts, so callers need no branch."""
    from tqdm.auto import tqdm  # imported on use: library calls without progress never load it

    return tqdm(disable=None if enabled else True, dynamic_ncols=True, **options)
