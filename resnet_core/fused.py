"""K runs of one architecture trained as one module (docs/DESIGN.md, "Models").

A :class:`FusedModel` holds every parameter and buffer of its K members stacked on a new leading
dim K and runs them with ``torch.func.vmap`` over ``torch.func.functional_call`` on a skeleton: a
copy of member 0 whose own tensors live on the meta device and are never read. The members are
ordinary :func:`~resnet_core.models.build_model` modules, so every variant of the family fuses
without layer code of its own, and the fused step computes what HFTA (Wang et al., MLSys 2021) builds by hand:
vmap's batching rules turn the K members' operators into single wide ones. In torch's source
(pytorch/pytorch, ``aten/src/ATen/functorch``):

- ``BatchRulesConvolution.cpp``, ``convolution_batch_rule``: with input and weight both batched it
  folds the member dim into the channels (``(N, K*C_in, H, W)``), multiplies ``groups`` by K, folds
  the weights into the output channels (``(K*C_out, C_in, kh, kw)``) and calls one
  ``at::convolution``: one grouped convolution. Autograd sees that op, so the backward is the
  grouped convolution's. With a shared input (``forward_shared``) the first convolution is one
  convolution with K*C_out outputs.
- ``BatchRulesNorm.cpp``, ``batch_norm_batch_rule``: folds the member dim into the channels, calls
  one ``native_batch_norm`` over K*C channels with a unit weight and zero bias, and applies each
  member's gamma and beta as a separate multiply and add. The stacked running stats are flattened to
  K*C by a view and updated in place, so each member keeps its own (BatchNorm's statistics are per
  channel, so K*C channels are K independent norms). The update reaches the stacked buffers only
  because they are contiguous (the rule calls ``.contiguous()`` on the flattened view); it refuses
  unbatched running stats in training mode.
- The head's ``F.linear`` with a batched weight becomes a batched matmul plus a separate bias add;
  ReLU, pooling and option A's pad act on the batched tensor directly. Under autocast the bias add
  falls outside autocast's cast list, so the fused logits are fp32 where a separate model's are
  bf16 (the cross-entropy is computed in fp32 either way). The global pool is a mean
  (``models.GlobalAvgPool``), which vmap batches in one kernel.

Each member's computation is its own: no operator mixes members, so a member whose weights turn NaN
leaves the others' outputs and gradients untouched. A loss that is the sum of the members' mean
losses gives each member exactly its own gradient; SGD and Adam(W) act element-wise, so one
optimizer over the stacked tensors is K optimizers sharing lr and weight decay.

Layout: an input ``(K, N, C, H, W)`` stored as ``(N, K, C, H, W)`` (channels last:
``(N, H, W, K, C)``) is folded into ``(N, K*C, H, W)`` by a view, not a copy;
:func:`stack_inputs` builds it. ``.to(memory_format=...)`` lays each member's slice of a stacked conv
weight out in that format (``nn.Module.to`` refuses channels_last on 5-d tensors).
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from resnet_core.config import ModelConfig
from resnet_core.models import build_model, stage_parameters

_SEP = "__"  # parameter names cannot hold ".": "layer1.0.conv1.weight" is registered as layer1__0__conv1__weight


def _first_difference(members: Sequence[nn.Module]) -> str | None:
    """One line naming the first tensor (name or shape) or module line in which a member differs from member 0."""
    reference = {name: tuple(t.shape) for name, t in members[0].state_dict().items()}
    for k, member in enumerate(members[1:], 1):
        shapes = {name: tuple(t.shape) for name, t in member.state_dict().items()}
        for name in [*reference, *(n for n in shapes if n not in reference)]:
            if reference.get(name) != shapes.get(name):
                return (f"fused members differ at {name!r}: member 0 has {reference.get(name, 'no such tensor')}, "
                        f"member {k} has {shapes.get(name, 'no such tensor')}; members need tensors of the same shapes")
        ours, theirs = repr(members[0]).splitlines(), repr(member).splitlines()
        for line0, line_k in zip(ours + [""] * len(theirs), theirs + [""] * len(ours)):
            if line0 != line_k:  # same tensors, other forward (e.g. plain and option-A residual twins)
                return (f"fused members differ in structure: member 0 has {line0.strip()!r}, member {k} has "
                        f"{line_k.strip()!r}; every member runs member 0's forward, so they must be the same network")
    return None


def check_fusable(members: Sequence[nn.Module]) -> None:
    """One-line ValueError unless there is at least one member and all share member 0's tensors and modules."""
    if len(members) < 1:
        raise ValueError(f"a fused model needs at least 1 member, got {len(members)}")
    problem = _first_difference(members)
    if problem:
        raise ValueError(problem)


def _member_layout(tensor: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A stacked tensor with each member's slice in ``memory_format`` (only stacked 4-d tensors have a layout)."""
    if tensor.dim() != 5 or memory_format == torch.preserve_format:
        return tensor
    if memory_format == torch.channels_last:  # (K, O, I, h, w) stored as (K, O, h, w, I)
        return tensor.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return tensor.contiguous(memory_format=memory_format)


class FusedModel(nn.Module):
    """K members of one architecture as one module; every parameter and buffer stacked on a new leading dim K.

    Parameters are registered in a member's ``parameters()`` order (index i of an optimizer over
    the fused model is index i of a member's optimizer), then the buffers in ``buffers()`` order.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        check_fusable(members)
        params, buffers = stack_module_state(list(members))
        for name, tensor in params.items():
            self.register_parameter(name.replace(".", _SEP), nn.Parameter(tensor.detach()))
        for name, tensor in buffers.items():
            self.register_buffer(name.replace(".", _SEP), tensor)
        self.size = len(members)
        self.tensor_names = (*params, *buffers)  # dotted member names, in registration order
        self.state_names = tuple(members[0].state_dict())  # a member's state_dict() keys, in its order
        # Not a submodule: its meta tensors are placeholders that functional_call replaces.
        self.__dict__["skeleton"] = copy.deepcopy(members[0]).to("meta").train(members[0].training)
        self.train(members[0].training)

    # ------------------------------------------------------------------------------ tensors

    def stacked(self, name: str) -> torch.Tensor:
        """The stacked (K, ...) tensor of a member's parameter or buffer ``name`` (dotted)."""
        return getattr(self, name.replace(".", _SEP))

    def _stacked_tensors(self) -> dict[str, torch.Tensor]:
        return {name: self.stacked(name) for name in self.tensor_names}

    def train(self, mode: bool = True) -> FusedModel:
        super().train(mode)
        self.skeleton.train(mode)  # BatchNorm's batch or running statistics
        return self

    def to(self, *args, **kwargs) -> FusedModel:
        """``nn.Module.to``; a memory format applies to each member's slice of the stacked weights."""
        device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        super().to(device=device, dtype=dtype, non_blocking=non_blocking)
        if memory_format is not None:
            self._apply(lambda t: _member_layout(t, memory_format))
        return self

    # ------------------------------------------------------------------------------ forward

    def _member_forward(self, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.skeleton, tensors, (x,), strict=True)

    def _check_input(self, x: torch.Tensor, dims: int, shape: str) -> None:
        if x.dim() != dims or (dims == 5 and x.shape[0] != self.size):
            raise ValueError(f"fused input of shape {tuple(x.shape)} is invalid: expected {shape} with K={self.size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K, N, C, H, W) -> (K, N, classes): member k sees x[k]
        self._check_input(x, 5, "(K, N, C, H, W)")
        return vmap(self._member_forward, in_dims=(0, 0))(self._stacked_tensors(), x)

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (K, N, classes): every member sees x
        self._check_input(x, 4, "(N, C, H, W)")
        return vmap(self._member_forward, in_dims=(0, None))(self._stacked_tensors(), x)

    # ------------------------------------------------------------------------------ members

    def _check_member(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k < self.size:
            raise ValueError(f"member {k!r} is invalid: expected an integer in [0, {self.size})")

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's state dict (detached clones), loadable with ``strict=True`` into ``build_model``."""
        self._check_member(k)
        return {name: self.stacked(name)[k].detach().clone() for name in self.state_names}

    def load_member_state_dict(self, k: int, state: Mapping[str, torch.Tensor]) -> None:
        """Write a member's state dict (as ``build_model(...).state_dict()`` has it) into slice k."""
        self._check_member(k)
        missing, unexpected = set(self.state_names) - set(state), set(state) - set(self.state_names)
        if missing or unexpected:
            raise ValueError(f"member state dict does not fit: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        with torch.no_grad():
            for name in self.state_names:
                target = self.stacked(name)[k]
                if tuple(state[name].shape) != tuple(target.shape):
                    raise ValueError(f"member state {name!r} has shape {tuple(state[name].shape)}: expected {tuple(target.shape)}")
                target.copy_(state[name])


def build_fused(cfg: ModelConfig | str, seeds: Sequence[int], num_classes: int | None,
                device: torch.device | str, memory_format: torch.memory_format) -> FusedModel:
    """Member k built right after ``torch.manual_seed(seeds[k])`` as ``engine.make_trainer`` builds
    a run's model, so it starts with the weights a separate run of that seed starts with."""
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(build_model(cfg, num_classes=num_classes))
    return FusedModel(members).to(device=device, memory_format=memory_format)


def stack_inputs(images: Sequence[torch.Tensor], memory_format: torch.memory_format) -> torch.Tensor:
    """K batches (N, C, H, W) -> (K, N, C, H, W), stored so vmap folds K into the channels without a copy."""
    if memory_format == torch.channels_last:  # stored (N, H, W, K, C)
        return torch.stack([x.permute(0, 2, 3, 1) for x in images], dim=3).permute(3, 0, 4, 1, 2)
    return torch.stack(list(images), dim=1).transpose(0, 1)  # stored (N, K, C, H, W)


# ------------------------------------------------------------------------------ gradients


def fused_stage_parameters(model: FusedModel) -> dict[str, list[nn.Parameter]]:
    """The groups of ``models.stage_parameters`` (stem, stage1..stageK, head), holding the stacked parameters."""
    stacked = {id(p): model.stacked(name) for name, p in model.skeleton.named_parameters()}
    return {group: [stacked[id(p)] for p in params] for group, params in stage_parameters(model.skeleton).items()}


def _member_norms(params: list[nn.Parameter], size: int, reference: torch.Tensor) -> torch.Tensor:
    """(K,): each member's L2 norm of the gradients of ``params`` (zeros where none has a gradient)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return reference.new_zeros(size)
    per_tensor = [torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim()))) for g in grads]  # each (K,)
    return torch.linalg.vector_norm(torch.stack(per_tensor), dim=0)


def member_grad_norms(stages: dict[str, list[nn.Parameter]]) -> torch.Tensor:
    """(K, n_stages): each member's L2 gradient norm per stage, on the device, without a host sync."""
    reference = next(p for params in stages.values() for p in params)
    columns = [_member_norms(params, reference.shape[0], reference) for params in stages.values()]
    return torch.stack(columns, dim=1)


# ------------------------------------------------------------------------------ optimizer state
# A stacked state tensor (momentum_buffer, exp_avg, exp_avg_sq, max_exp_avg_sq) has the stacked
# parameter's shape and is sliced; a 0-d tensor or a number (Adam's ``step``) is the group's, shared.


def _is_stacked(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0


def member_optimizer_state(state: dict, k: int) -> dict:
    """A fused optimizer's ``state_dict()`` -> member k's, in the format a separate run's optimizer writes."""
    sliced = {index: {key: value[k].clone() if _is_stacked(value) else copy.deepcopy(value) for key, value in entry.items()}
              for index, entry in state["state"].items()}
    return {"state": sliced, "param_groups": copy.deepcopy(state["param_groups"])}


def _fused_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _load_shared(slot: dict, key: str, value, k: int, index: int) -> None:
    """A shared entry (Adam's step) is set once; a member that disagrees with the group is refused."""
    if key in slot and not torch.equal(torch.as_tensor(slot[key]).cpu(), torch.as_tensor(value).cpu()):
        raise ValueError(f"member {k}'s optimizer state {key}={value!r} of parameter {index} differs from the "
                         f"fused group's {slot[key]!r}: members of one group share it")
    slot[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def load_member_optimizer_state(optimizer: torch.optim.Optimizer, k: int, member_state: dict) -> None:
    """Write a member's optimizer state (as a separate run saves it) into slice k of ``optimizer``'s state.

    Slices missing from a fresh optimizer start at zero; the param groups (lr, weight decay) stay the
    fused optimizer's, which every member shares."""
    params = _fused_params(optimizer)
    for index, entry in member_state["state"].items():
        if not 0 <= int(index) < len(params):
            raise ValueError(f"member optimizer state names parameter {index}: the fused optimizer has {len(params)}")
        param = params[int(index)]
        slot = optimizer.state[param]
        for key, value in entry.items():
            if not _is_stacked(value):
                _load_shared(slot, key, value, k, int(index))
                continue
            if key not in slot:
                slot[key] = torch.zeros_like(param, dtype=value.dtype)
            with torch.no_grad():
                slot[key][k].copy_(value)
