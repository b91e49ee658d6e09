"""Config validation, layering and identity."""

from __future__ import annotations

import pytest

from resnet_core.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    parse_assignments,
    recipe,
    run_config_from_dict,
    run_id,
    to_dict,
)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: ModelConfig(depth=21), r"depth=21 .*6n\+2"),
        (lambda: ModelConfig(depth=30, block="bottleneck"), r"depth=30 .*9n\+2"),
        (lambda: ModelConfig(shortcut="D"), r"shortcut='D' .*A, B, C, conv3x3"),
        (lambda: ModelConfig(widths=(16, 0, 64)), r"widths="),
        (lambda: ModelConfig(norm="layer"), r"norm='layer' .*batch, none"),
        (lambda: TrainConfig(epochs=None, iterations=None), r"exactly one of epochs and iterations"),
        (lambda: TrainConfig(optimizer="lion"), r"optimizer='lion' .*sgd, adam, adamw"),
        (lambda: TrainConfig(lr=-1), r"lr=-1"),
        (lambda: TrainConfig(milestones=(0.75, 0.5)), r"milestones"),
        (lambda: DataConfig(val_size=-5), r"val_size=-5"),
        (lambda: RunConfig(device="gpu"), r"device='gpu'"),
    ],
)
def test_invalid_values_name_the_field_and_what_is_allowed(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_overrides_coerce_types_and_reject_unknown_names():
    run = RunConfig(data=DataConfig(source="synthetic"))
    changed = apply_overrides(run, {"depth": "56", "residual": "false", "lr": "0.05", "train.milestones": "0.3,0.6",
                                    "subset": "1000", "seed": "3"})
    assert changed.model.depth == 56 and changed.model.residual is False
    assert changed.train.lr == 0.05 and changed.train.milestones == (0.3, 0.6)
    assert changed.data.subset == 1000 and changed.seed == 3
    with pytest.raises(ValueError, match="unknown config field 'dept'"):
        apply_overrides(run, {"dept": 56})
    with pytest.raises(ValueError, match="depth='deep' is invalid: expected an integer"):
        apply_overrides(run, {"depth": "deep"})
    with pytest.raises(ValueError, match="depth=21"):
        apply_overrides(run, {"depth": 21})


def test_a_budget_override_replaces_the_recipe_budget():
    paper = RunConfig(train=recipe("paper"), data=DataConfig(source="synthetic"))
    assert apply_overrides(paper, {"epochs": 2}).train.iterations is None
    quick = RunConfig(train=recipe("quick"), data=DataConfig(source="synthetic"))
    assert apply_overrides(quick, {"iterations": 100}).train.epochs is None


def test_parse_assignments():
    assert parse_assignments(["depth=56", "lr = 0.1"]) == {"depth": "56", "lr": "0.1"}
    with pytest.raises(ValueError, match="expected field=value"):
        parse_assignments(["depth56"])


def test_round_trip_and_stable_identity():
    run = RunConfig(model=ModelConfig(depth=32, residual=False), data=DataConfig(source="synthetic"), seed=4)
    again = run_config_from_dict(to_dict(run))
    assert again == run and run_id(again) == run_id(run)
    assert run_id(run) == run_id(RunConfig(model=ModelConfig(depth=32, residual=False),
                                           data=DataConfig(source="synthetic", cache_dir="/elsewhere"), seed=4))


def test_data_source_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("RESNET_CORE_DATA", "/some/dir")
    assert DataConfig().source == "/some/dir"
    monkeypatch.delenv("RESNET_CORE_DATA")
    assert DataConfig().source == "cifar10"


def test_unknown_recipe_lists_known():
    with pytest.raises(ValueError, match="paper, seed, quick"):
        recipe("fast")
