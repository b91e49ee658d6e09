"""Fused runs (resnet_core/fused.py): K members as one module match K separate models step for step."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from resnet_core.config import ModelConfig, TrainConfig
from resnet_core.fused import (
    FusedModel,
    build_fused,
    fused_stage_parameters,
    load_member_optimizer_state,
    member_grad_norms,
    member_optimizer_state,
    stack_inputs,
)
from resnet_core.models import build_model, stage_parameters
from resnet_core.schedules import build_optimizer

SEEDS = (0, 1, 2)
K, BATCH, SIZE, CLASSES = len(SEEDS), 8, 16, 10
TINY = ModelConfig(depth=8, widths=(4, 8, 16))
VARIANTS = {
    "residual": TINY,
    "plain": dataclasses.replace(TINY, residual=False),
    "shortcut_B": dataclasses.replace(TINY, shortcut="B"),
    "shortcut_C": dataclasses.replace(TINY, shortcut="C"),
    "conv3x3": dataclasses.replace(TINY, shortcut="conv3x3"),
    "preact": dataclasses.replace(TINY, preact=True),
    "bottleneck": dataclasses.replace(TINY, depth=11, block="bottleneck"),
    "preact_bottleneck": dataclasses.replace(TINY, depth=11, block="bottleneck", preact=True, shortcut="B"),
    "norm_none": dataclasses.replace(TINY, norm="none"),
}
SGD = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def separate_models(cfg: ModelConfig) -> list[torch.nn.Module]:
    """What K separate runs start from: engine.make_trainer seeds, then builds."""
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(build_model(cfg, num_classes=CLASSES))
    return models


def fused_model(cfg: ModelConfig, memory_format=torch.contiguous_format) -> FusedModel:
    return build_fused(cfg, SEEDS, CLASSES, "cpu", memory_format)


def random_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's own batch: (K, N, 3, H, W) images, (K, N) labels."""
    return (torch.randn(K, BATCH, 3, SIZE, SIZE, generator=generator),
            torch.randint(0, CLASSES, (K, BATCH), generator=generator))


def member_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K,): each member's mean cross-entropy of its own batch."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(K, -1).mean(1)


@dataclasses.dataclass
class Lockstep:
    """A fused group and K separate models trained side by side on the same batches."""

    fused: FusedModel
    models: list[torch.nn.Module]
    fused_optimizer: torch.optim.Optimizer
    optimizers: list[torch.optim.Optimizer]
    generator: torch.Generator
    dtype: torch.dtype

    def step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of both; returns (fused logits, separate logits, fused losses, separate losses)."""
        x, y = random_batch(self.generator)
        x = x.to(self.dtype)
        logits = self.fused(x)
        losses = member_losses(logits, y)
        self.fused_optimizer.zero_grad()
        losses.sum().backward()
        self.fused_optimizer.step()
        outs, sep = [], []
        for k, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            out = model(x[k])
            loss = F.cross_entropy(out, y[k])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            outs.append(out.detach())
            sep.append(loss.detach())
        return logits.detach(), torch.stack(outs), losses.detach(), torch.stack(sep)

    def resync(self) -> None:
        """Give each separate model its fused member's weights, buffers and optimizer state."""
        for k, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            model.load_state_dict(self.fused.member_state_dict(k), strict=True)
            optimizer.load_state_dict(member_optimizer_state(self.fused_optimizer.state_dict(), k))


def lockstep(cfg: ModelConfig, train: TrainConfig = SGD, dtype: torch.dtype = torch.float32) -> Lockstep:
    fused, models = fused_model(cfg).to(dtype), [m.to(dtype) for m in separate_models(cfg)]
    return Lockstep(fused, models, build_optimizer(fused, train), [build_optimizer(m, train) for m in models],
                    torch.Generator().manual_seed(123), dtype)


def assert_members_equal(fused: FusedModel, models: list[torch.nn.Module], atol: float) -> None:
    """Every member's weights and buffers (running stats, num_batches_tracked) equal its separate model's."""
    for k, model in enumerate(models):
        member = fused.member_state_dict(k)
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(member[name], tensor, atol=atol, rtol=0, msg=lambda m: f"member {k} {name}: {m}")


# ------------------------------------------------------------------------------------------ equivalence


# Free-running fp32 runs are not comparable for 20 steps, with or without fusion: where rounding moves
# a pre-activation across zero, a ReLU passes or stops that unit's gradient (a 1e-3 jump in a weight's
# gradient), and the runs then drift apart (a separate model whose weights are scaled by 1 + 1e-7 drifts
# from itself by up to 1e-2 in the loss within 20 steps for the bottleneck and option-C nets at lr 0.05).
# So the 20 free-running steps are compared in fp64, where fused and separate runs agree to ~1e-15,
# and fp32 is compared step by step from shared states (losses and running stats: the forward is continuous).


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_members_train_like_separate_models_for_20_steps(variant):
    run = lockstep(VARIANTS[variant], dtype=torch.float64)
    for step in range(20):
        fused_logits, logits, fused_losses, losses = run.step()
        if step == 0:  # the forward of the untrained members
            torch.testing.assert_close(fused_logits, logits, atol=1e-9, rtol=0)
        torch.testing.assert_close(fused_losses, losses, atol=1e-9, rtol=0, msg=lambda m: f"step {step}: {m}")
    assert_members_equal(run.fused, run.models, atol=1e-9)  # weights and running stats


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fp32_fused_steps_match_separate_steps(variant):
    run = lockstep(VARIANTS[variant])
    buffers = [name for name, _ in run.models[0].named_buffers()]
    assert bool(buffers) == (variant != "norm_none")
    for step in range(20):
        run.resync()
        fused_logits, logits, fused_losses, losses = run.step()
        torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=0, msg=lambda m: f"step {step}: {m}")
        torch.testing.assert_close(fused_losses, losses, atol=1e-5, rtol=0, msg=lambda m: f"step {step}: {m}")
        for k, model in enumerate(run.models):  # the running stats this step updated
            member = run.fused.member_state_dict(k)
            for name in buffers:
                torch.testing.assert_close(member[name], model.get_buffer(name), atol=1e-5, rtol=0)


def test_parameters_follow_a_members_order_and_are_real_parameters():
    fused, (model, *_) = fused_model(TINY), separate_models(TINY)
    params = list(fused.parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in params)
    assert [tuple(p.shape) for p in params] == [(K, *p.shape) for p in model.parameters()]
    assert [fused.tensor_names[i] for i in range(len(params))] == [name for name, _ in model.named_parameters()]
    state = fused.state_dict()
    assert len(state) == len(model.state_dict())
    copy = fused_model(dataclasses.replace(TINY))
    with torch.no_grad():
        for p in copy.parameters():
            p.zero_()
    copy.load_state_dict(state)  # the group's own checkpoint round-trips
    torch.testing.assert_close(copy.member_state_dict(1), fused.member_state_dict(1), atol=0, rtol=0)


def test_channels_last_and_autocast_give_the_separate_models_results():
    models, x = separate_models(TINY), random_batch(torch.Generator().manual_seed(5))[0]
    with torch.no_grad():
        expected = torch.stack([m(x[k]) for k, m in enumerate(models)])
        fused = fused_model(TINY, torch.channels_last)
        weight = fused.stacked("layer1.0.conv1.weight")
        assert weight[0].is_contiguous(memory_format=torch.channels_last) and not weight[0].is_contiguous()
        inputs = stack_inputs(list(x), torch.channels_last)
        assert inputs.permute(1, 3, 4, 0, 2).is_contiguous()  # stored (N, H, W, K, C)
        torch.testing.assert_close(fused(inputs), expected, atol=1e-5, rtol=0)
        moved = fused_model(TINY).to("cpu", memory_format=torch.channels_last)  # nn.Module.to refuses 5-d channels_last
        torch.testing.assert_close(moved(stack_inputs(list(x), torch.contiguous_format)), expected, atol=1e-5, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused_bf16 = fused_model(TINY)(x)
            separate_bf16 = torch.stack([m(x[k]) for k, m in enumerate(separate_models(TINY))])
    torch.testing.assert_close(fused_bf16.float(), separate_bf16.float(), atol=0.05, rtol=0.05)
    assert (fused_bf16.float() - expected).abs().max() > 0  # bf16 did run


# --------------------------------------------------------------------------------------- members


def test_an_extracted_member_loads_strictly_into_build_model_with_equal_outputs():
    run = lockstep(VARIANTS["shortcut_B"])
    for _ in range(3):
        run.step()
    x = random_batch(torch.Generator().manual_seed(7))[0]
    run.fused.eval()
    with torch.no_grad():
        fused_out, shared_out = run.fused(x), run.fused.forward_shared(x[0])
    for k in range(K):
        model = build_model(VARIANTS["shortcut_B"], num_classes=CLASSES)
        model.load_state_dict(run.fused.member_state_dict(k), strict=True)
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x[k]), fused_out[k], atol=1e-5, rtol=0)
            torch.testing.assert_close(model(x[0]), shared_out[k], atol=1e-5, rtol=0)


def test_load_member_state_dict_is_the_inverse_of_member_state_dict():
    fused = fused_model(TINY)
    run = lockstep(TINY)
    run.step()
    trained = run.fused.member_state_dict(2)
    before = [fused.member_state_dict(k) for k in range(K)]
    fused.load_member_state_dict(1, trained)
    for name, tensor in fused.member_state_dict(1).items():
        torch.testing.assert_close(tensor, trained[name], atol=0, rtol=0)
    for k in (0, 2):  # the other slices are untouched
        for name, tensor in fused.member_state_dict(k).items():
            torch.testing.assert_close(tensor, before[k][name], atol=0, rtol=0)
    with pytest.raises(ValueError, match="missing \\['fc.bias'\\]"):
        fused.load_member_state_dict(0, {n: t for n, t in trained.items() if n != "fc.bias"})


# ------------------------------------------------------------------------------------- optimizer


def assert_same_optimizer_state(actual: dict, expected: dict) -> None:
    assert actual["param_groups"] == expected["param_groups"]
    assert list(actual["state"]) == list(expected["state"])
    for index, entry in expected["state"].items():
        assert list(actual["state"][index]) == list(entry)
        for key, value in entry.items():
            torch.testing.assert_close(actual["state"][index][key], value, atol=1e-6, rtol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_member_optimizer_state_is_a_separate_runs_and_loads_back(optimizer):
    train = dataclasses.replace(SGD, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3)
    run = lockstep(TINY, train)
    for _ in range(3):
        run.step()
    state = run.fused_optimizer.state_dict()
    for k in range(K):
        assert_same_optimizer_state(member_optimizer_state(state, k), run.optimizers[k].state_dict())
    fresh = build_optimizer(run.fused, train)
    for k in range(K):  # a group resumed from its members' checkpoints
        load_member_optimizer_state(fresh, k, run.optimizers[k].state_dict())
    assert_same_optimizer_state(fresh.state_dict(), state)


def test_members_disagreeing_on_adams_step_are_refused():
    train = dataclasses.replace(SGD, optimizer="adam", lr=1e-3)
    run = lockstep(TINY, train)
    run.step()
    member = member_optimizer_state(run.fused_optimizer.state_dict(), 0)
    member["state"][0]["step"] = member["state"][0]["step"] + 1
    with pytest.raises(ValueError, match="step=.* differs from the fused group's"):
        load_member_optimizer_state(run.fused_optimizer, 0, member)


# ------------------------------------------------------------------------------------ grad norms


def test_member_grad_norms_are_the_separate_models_stage_norms():
    run = lockstep(VARIANTS["preact"])
    for _ in range(2):
        run.step()
    norms = member_grad_norms(fused_stage_parameters(run.fused))
    stages = stage_parameters(run.models[0])
    assert list(fused_stage_parameters(run.fused)) == list(stages)
    expected = torch.stack([
        torch.stack([torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
                     for params in stage_parameters(model).values()])
        for model in run.models])
    assert norms.shape == (K, len(stages))
    torch.testing.assert_close(norms, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- errors


def test_members_of_different_shapes_or_structure_are_a_one_line_error():
    small, wide = build_model(TINY), build_model(dataclasses.replace(TINY, widths=(4, 8, 32)))
    with pytest.raises(ValueError) as error:
        FusedModel([small, small, wide])
    message = str(error.value)
    assert "\n" not in message and "'layer3.0.conv1.weight'" in message
    assert "(16, 8, 3, 3)" in message and "(32, 8, 3, 3)" in message and "member 2" in message
    with pytest.raises(ValueError, match="at least 1 member, got 0"):
        FusedModel([])
    # Option A adds no tensors: the plain twin has the residual net's shapes but another forward.
    with pytest.raises(ValueError, match="differ in structure") as error:
        FusedModel([small, build_model(VARIANTS["plain"])])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"expected \(K, N, C, H, W\) with K=3"):
        fused_model(TINY)(torch.zeros(2, 1, 3, SIZE, SIZE))


# ------------------------------------------------------------------------------------ divergence


def test_a_diverged_member_leaves_the_others_outputs_and_gradients_unchanged():
    x, y = random_batch(torch.Generator().manual_seed(11))

    def forward_backward(poison: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fused = fused_model(TINY)
        if poison:
            with torch.no_grad():
                for p in fused.parameters():
                    p[1].fill_(math.nan)
        logits = fused(x)
        member_losses(logits, y).sum().backward()
        return logits.detach(), [p.grad for p in fused.parameters()]

    clean_out, clean_grads = forward_backward(poison=False)
    out, grads = forward_backward(poison=True)
    assert out[1].isnan().all()
    others = [0, 2]
    assert torch.isfinite(out[others]).all()
    torch.testing.assert_close(out[others], clean_out[others], atol=0, rtol=0)
    for grad, clean in zip(grads, clean_grads):
        assert torch.isfinite(grad[others]).all()
        torch.testing.assert_close(grad[others], clean[others], atol=0, rtol=0)
