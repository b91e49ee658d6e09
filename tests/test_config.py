"""Config validation, layering and identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from resnet_core.config import (
    DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides, default_data_source, parse_assignments, run_config_from_dict, to_dict,
)
from resnet_core.identity import identity_settings, run_id
from resnet_core.recipes import recipe


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
        (lambda: TrainConfig(test_eval="sometimes"), r"test_eval='sometimes' .*every_epoch, end, never"),
        (lambda: RunConfig(device="gpu"), r"device='gpu'"),
        (lambda: TrainConfig(sync_every=-1), r"sync_every=-1 is invalid: expected an integer >= 0"),
        (lambda: TrainConfig(checkpoint_every=0), r"checkpoint_every=0 is invalid: expected an integer >= 1"),
        (lambda: TrainConfig(compile_mode="fast"), r"compile_mode='fast' .*default, reduce-overhead, max-autotune"),
    ],
)
def test_invalid_values_name_the_field_and_what_is_allowed(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_how_a_run_is_executed_is_not_part_of_its_identity():
    run = RunConfig(data=DataConfig(source="synthetic"))
    lean = apply_overrides(run, {"sync_every": "0", "checkpoint_every": "5", "compile_mode": "reduce-overhead"})
    assert lean.train.sync_every == 0 and lean.train.checkpoint_every == 5
    assert run_id(lean) == run_id(run) and apply_overrides(lean, {"sync_every": "none"}).train.sync_every is None


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


def test_the_environment_is_read_by_default_data_source_not_by_the_dataclass(monkeypatch):
    monkeypatch.setenv("RESNET_CORE_DATA", "/some/dir")
    assert DataConfig().source == "cifar10"
    assert default_data_source() == "/some/dir"
    monkeypatch.delenv("RESNET_CORE_DATA")
    assert default_data_source() == "cifar10"


# A config touching every section; its id is pinned below. If this test fails, stored runs lose
# their records: bump identity.RUN_ID_SCHEMA and migrate (resnet_core/migrate.py) instead.
PINNED = RunConfig(model=ModelConfig(depth=56, residual=False), train=recipe("quick"),
                   data=DataConfig(source="synthetic:2000", subset=1000, val_size=500), seed=1, device="cpu")


def test_pinned_run_id():
    assert run_id(PINNED) == "4c35b20c6418048e"
    assert run_id(RunConfig(data=DataConfig(source="synthetic"))) == "16671d2ef7692cd6"


def test_run_id_hashes_the_schema_the_changed_settings_and_the_data():
    settings = {"model.depth": 56, "model.residual": False, "train.epochs": 3, "train.nesterov": True,
                "train.weight_decay": 0.0005, "train.schedule": "onecycle", "data.val_size": 500,
                "data.subset": 1000, "seed": 1}
    assert identity_settings(PINNED) == settings  # device, paths and defaults are left out
    payload = json.dumps({"schema": 2, "settings": settings, "data": "synthetic:2000"}, sort_keys=True,
                         separators=(",", ":"))
    assert run_id(PINNED) == hashlib.sha256(payload.encode()).hexdigest()[:16]


# The defaults the hash leaves out. A changed default would give old and new runs one id: change
# one only with a new RUN_ID_SCHEMA and a migration. (New fields may be added: see the next test.)
SCHEMA_2_DEFAULTS = {
    "model.depth": 20, "model.blocks": None, "model.widths": [16, 32, 64], "model.width_multiplier": 1.0,
    "model.num_classes": None, "model.in_channels": 3, "model.residual": True, "model.shortcut": "A",
    "model.norm": "batch", "model.preact": False, "model.block": "basic", "model.zero_init_residual": False,
    "train.epochs": 10, "train.iterations": None, "train.batch_size": 128, "train.optimizer": "sgd", "train.lr": 0.1,
    "train.momentum": 0.9, "train.nesterov": False, "train.weight_decay": 1e-4, "train.schedule": "step",
    "train.milestones": [0.5, 0.75], "train.gamma": 0.1, "train.warmup_iterations": 0, "train.warmup_lr": 0.01,
    "train.warmup_fraction": 0.0, "train.label_smoothing": 0.0, "train.augment": "padcrop_flip",
    "train.normalize": True, "train.amp": "auto", "train.channels_last": True, "train.compile": False,
    "train.eval_batch_size": 1000, "data.val_size": 5000, "data.subset": None, "data.split_seed": 0,
    "data.resize": False, "seed": 0,
}


def test_the_defaults_left_out_of_the_hash_have_not_changed():
    defaults = to_dict(RunConfig())
    now = {name: defaults[name.split(".")[0]][name.split(".")[1]] if "." in name else defaults[name]
           for name in SCHEMA_2_DEFAULTS}
    assert now == SCHEMA_2_DEFAULTS


def with_new_fields():
    """Variants of the config classes with one new defaulted field each, as a later version may add."""
    def extend(cls, name, default, **more):
        extra = [(name, type(default), dataclasses.field(default=default))]
        extra += [(k, v[0], dataclasses.field(default_factory=v[1])) for k, v in more.items()]
        return dataclasses.make_dataclass(cls.__name__, extra, bases=(cls,), frozen=True)

    model = extend(ModelConfig, "stem_stride", 1)
    train = extend(TrainConfig, "grad_clip", 0.0)
    data = extend(DataConfig, "channels", "rgb")
    run = extend(RunConfig, "note_level", 0, model=(model, model), train=(train, train), data=(data, data))
    return model, train, data, run


def test_adding_a_field_with_a_default_keeps_every_id():
    model_cls, train_cls, data_cls, run_cls = with_new_fields()
    configs = [
        PINNED,
        RunConfig(data=DataConfig(source="synthetic")),
        RunConfig(model=ModelConfig(depth=110, preact=True), train=recipe("paper"),
                  data=DataConfig(source="cifar10", root="/elsewhere"), seed=3),
        RunConfig(model=ModelConfig(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)), train=recipe("tutorial"),
                  data=DataConfig(source="cifar100", subset=5000, split_seed=2), seed=2),
    ]
    for run in configs:
        again = run_cls(
            model=model_cls(**dataclasses.asdict(run.model)), train=train_cls(**dataclasses.asdict(run.train)),
            data=data_cls(**dataclasses.asdict(run.data)), seed=run.seed, device=run.device,
        )
        assert "grad_clip" in to_dict(again)["train"]
        assert run_id(again) == run_id(run)
        assert run_id(dataclasses.replace(again, train=dataclasses.replace(again.train, grad_clip=1.0))) != run_id(run)


def test_unknown_recipe_lists_known():
    with pytest.raises(ValueError, match="paper, tutorial, quick"):
        recipe("fast")


def test_the_old_name_seed_of_the_tutorial_still_works_with_a_warning():
    from resnet_core.models import resolve_model
    from resnet_core.recipes import TUTORIAL, recipe

    with pytest.warns(FutureWarning, match="'seed' is now called 'tutorial'"):
        assert recipe("seed") == TUTORIAL
    with pytest.warns(FutureWarning, match="model preset 'seed'"):
        assert resolve_model("seed") == resolve_model("tutorial")
    with pytest.warns(FutureWarning, match="augment 'seed'"):
        old = TrainConfig(augment="seed")
    assert old == TrainConfig(augment="tutorial") and run_id(RunConfig(train=old)) == run_id(RunConfig(train=TrainConfig(augment="tutorial")))
