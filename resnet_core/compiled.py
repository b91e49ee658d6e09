"""The module a run's steps call: the model itself, or ``torch.compile``'d with its compiled code
kept across the runs of one shape in a process."""

from __future__ import annotations

import functools
from typing import Hashable

import torch
from torch import nn

from resnet_core.config import RunConfig


def compiled_step_model(model: nn.Module, run: RunConfig, *context: Hashable) -> nn.Module:
    """``model``, or ``torch.compile``'d in the run's ``compile_mode`` when ``compile`` is set.

    Dynamo keeps compiled code per process, keyed by the forward's code, and a new instance of a
    module with the same shapes reuses it: a worker's next run of one shape compiles nothing. A run
    of another shape resets the caches first: a long-lived worker compiling a new model per trial
    (a continuous ``width_multiplier``) would pile up guards and recompile until
    ``torch._dynamo.config.recompile_limit``, then silently run eager (torch.compiler
    troubleshooting docs). ``dynamic=False`` compiles each batch size as a fixed shape rather than
    one symbolic in the batch: a run meets two (its training and its evaluation batch, the last
    evaluation batch padded: ``Trainer.pad_eval``), and a fixed shape is what CUDA graphs replay.
    ``context``: what else the compiled graphs depend on (device, autocast dtype, classes).
    """
    if not run.train.compile:
        return model
    train = run.train
    _dynamo_caches_for((run.model, train.batch_size, train.eval_batch_size, train.channels_last,
                        train.compile_mode, *context))
    return torch.compile(model, mode=train.compile_mode, dynamic=False)


@functools.lru_cache(maxsize=1)
def _dynamo_caches_for(shape: tuple) -> None:
    """Reset Dynamo's caches unless they were last reset for this ``shape``. One entry: a call with
    the last shape is a cache hit that does nothing, another shape resets. Dynamo's caches are
    process state, so the memory of which shape they hold is too."""
    torch._dynamo.reset()


def begin_graph_step(run: RunConfig) -> None:
    """Under CUDA graphs (compile mode ``reduce-overhead``), tell torch a new training step begins:
    a replayed graph reuses its output memory, and outside a plain inference or training loop torch
    cannot tell when the last step's outputs are done with (``torch.compiler.cudagraph_mark_step_begin``)."""
    if run.train.compile and run.train.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()
