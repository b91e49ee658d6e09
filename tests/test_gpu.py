"""GPU readiness: run on a CUDA machine (scripts/gpu_check.sh); skipped where CUDA is absent."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from resnet_core.augment import make_train_transform
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.data import load_data
from resnet_core.engine import fit, make_trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

RUN = RunConfig(
    model=ModelConfig(depth=20),
    train=TrainConfig(epochs=1, batch_size=128, eval_batch_size=1000),
    data=DataConfig(source="synthetic", val_size=500, subset=2000),
    device="cuda",
)


def test_data_and_augmentation_live_on_the_gpu():
    data = load_data(RUN.data, "cuda")
    assert data.train_x.is_cuda and data.train_x.dtype == torch.uint8
    transform = make_train_transform("padcrop_flip", data.mean, data.std, True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = transform(data.train_x[:256], generator)
    assert out.is_cuda and out.shape == (256, 3, 32, 32) and out.dtype == torch.float32


def test_auto_amp_is_bf16_and_channels_last_on_cuda(tmp_path):
    trainer = make_trainer(RUN, load_data(RUN.data, "cuda"))
    assert trainer.amp_dtype == torch.bfloat16
    conv = trainer.model.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    record = fit(RUN, results_dir=tmp_path)
    assert record.status == "completed", record.error
    assert record.provenance["amp"] == "bfloat16" and record.provenance["device"].startswith("cuda")


def test_compile_trains(tmp_path):
    run = dataclasses.replace(RUN, train=dataclasses.replace(RUN.train, compile=True))
    record = fit(run, results_dir=tmp_path)
    assert record.status == "completed", record.error
    assert record.final["train_loss"] < 2.4


def test_two_runs_share_one_gpu(tmp_path):
    code = (
        "import sys; from resnet_core.train import main; "
        "sys.exit(main(['--model', 'resnet20', '--recipe', 'quick', '--epochs', '1', '--data', 'synthetic', "
        "'--subset', '2000', '--val-size', '500', '--device', 'cuda', '--quiet', '--seed', sys.argv[1], "
        f"'--results', {str(tmp_path)!r}]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seed)]) for seed in (0, 1)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
