"""GPU readiness: run on a CUDA machine (scripts/gpu_check.sh); skipped where CUDA is absent.

Everything trains resnet20 (or depth 8 where processes are spawned) for 1-3 epochs of 1,000
synthetic images: the paths a first real GPU run takes (precision, checkpoints, placement,
worker processes), not accuracy.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from resnet_core import devices
from resnet_core.augment import make_train_transform
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.identity import run_id
from resnet_core.data import load_data
from resnet_core.engine import fit, make_trainer
from resnet_core.runner import run_all
from resnet_core.store import checkpoint_path, find_record, load_runs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[1]
# Synthetic data has 2,000 training images: 1,500 are left after validation takes 500.
RUN = RunConfig(
    model=ModelConfig(depth=20),
    train=TrainConfig(epochs=1, batch_size=128, eval_batch_size=1000),
    data=DataConfig(source="synthetic", val_size=500, subset=1000),
    device="cuda",
)


def with_train(run: RunConfig = RUN, **changes) -> RunConfig:
    return dataclasses.replace(run, train=dataclasses.replace(run.train, **changes))


def native_bf16() -> bool:
    return torch.cuda.get_device_capability() >= (8, 0)


def checkpoint_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "checkpoint" in str(w.message)]


def test_data_and_augmentation_live_on_the_gpu():
    data = load_data(RUN.data, "cuda")
    assert data.train_x.is_cuda and data.train_x.dtype == torch.uint8 and len(data.train_y) == 1000
    transform = make_train_transform("padcrop_flip", data.mean, data.std, True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = transform(data.train_x[:256], generator)
    assert out.is_cuda and out.shape == (256, 3, 32, 32) and out.dtype == torch.float32


def test_auto_amp_follows_the_gpu_and_is_recorded(tmp_path):
    trainer = make_trainer(RUN, load_data(RUN.data, "cuda"))
    assert trainer.amp_dtype == (torch.bfloat16 if native_bf16() else torch.float16)
    assert (trainer.scaler is None) == native_bf16()
    assert trainer.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    del trainer
    record = fit(RUN, results_dir=tmp_path)
    assert record.status == "completed", record.error
    prov = record.provenance
    assert prov["amp"] == ("bfloat16" if native_bf16() else "float16") and prov["grad_scaler"] == (not native_bf16())
    assert prov["device"].startswith("cuda") and prov["device_type"] == "cuda" and prov["cudnn_benchmark"] is True


def test_fp16_trains_with_a_grad_scaler(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "cuda_has_native_bf16", lambda device: False)  # as on a T4 or V100
    run = with_train(epochs=2)
    trainer = make_trainer(run, load_data(run.data, "cuda"))
    assert trainer.amp_dtype == torch.float16 and isinstance(trainer.scaler, torch.amp.GradScaler)
    del trainer
    record = fit(run, results_dir=tmp_path)
    assert record.status == "completed", record.error
    assert record.provenance["amp"] == "float16" and record.provenance["grad_scaler"] is True
    assert record.final["train_loss"] < 2.4  # finite and learning (chance: ln 10 = 2.30)
    norms = [v for epoch in record.history for v in epoch["grad_norm"].values()]
    assert all(math.isnan(v) or (math.isfinite(v) and v >= 0) for v in norms)  # skipped steps are not averaged in


def test_fp32_states_tf32(tmp_path):
    record = fit(with_train(amp="off"), results_dir=tmp_path)
    assert record.status == "completed", record.error
    prov = record.provenance
    assert prov["amp"] == "fp32" and prov["grad_scaler"] is False
    # PyTorch's defaults on Ampere and later: convolutions in TF32, matmuls in full fp32.
    assert prov["tf32_conv"] is native_bf16() and prov["tf32_matmul"] is False


def test_compile_trains_twice_in_one_process(tmp_path):
    for width in (1.0, 1.25):  # a new graph per run, as a study's continuous width_multiplier gives
        run = dataclasses.replace(with_train(compile=True), model=ModelConfig(depth=20, width_multiplier=width))
        record = fit(run, results_dir=tmp_path)
        assert record.status == "completed", record.error
        # 8 steps from chance level (ln 10 = 2.30) on synthetic data: the epoch's mean loss lands near
        # 2.3-2.4 (2.401 on an H200 once), so the bound only rules out a compiled step that diverges.
        assert math.isfinite(record.final["train_loss"]) and record.final["train_loss"] < 2.6


def test_a_lean_run_with_cuda_graphs_compiles_once_per_shape(tmp_path):
    """The lean step's CUDA side: no host read inside an epoch by default, a checkpoint every 2 epochs,
    compiled steps replayed as CUDA graphs, and a second seed of one shape compiling nothing."""
    from torch._dynamo.utils import counters

    assert make_trainer(RUN, load_data(RUN.data, "cuda")).sync_every == 0
    graphs = []
    for seed in (0, 1):
        lean = with_train(epochs=2, compile=True, compile_mode="reduce-overhead", checkpoint_every=2)
        record = fit(dataclasses.replace(lean, seed=seed), results_dir=tmp_path)
        assert record.status == "completed", record.error
        assert math.isfinite(record.final["train_loss"]) and record.final["train_loss"] < 2.6
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[0]


def test_resume_after_interrupt_on_the_gpu(tmp_path):
    run = with_train(epochs=3)

    def kill_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        fit(run, callbacks=[kill_after_first_epoch], results_dir=tmp_path)
    stopped = find_record(tmp_path, run_id(run))
    assert stopped.status == "stopped" and checkpoint_path(tmp_path, run_id(run)).exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(run, results_dir=tmp_path)
    assert checkpoint_warnings(caught) == []  # restored: neither unusable nor reseeded
    assert resumed.status == "completed", resumed.error
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3] and resumed.history[0] == stopped.history[0]
    assert resumed.provenance["resumed_from_device"] is None


def test_a_cpu_checkpoint_resumes_on_the_gpu_with_a_reseed_warning(tmp_path):
    run = with_train(epochs=2)
    stopped = fit(dataclasses.replace(run, device="cpu"), callbacks=[lambda m: True], results_dir=tmp_path)
    assert stopped.status == "stopped" and len(stopped.history) == 1
    with pytest.warns(UserWarning, match="comes from a cpu device and this run resumes on a cuda device"):
        resumed = fit(run, results_dir=tmp_path)
    assert resumed.status == "completed", resumed.error
    assert len(resumed.history) == 2 and resumed.provenance["resumed_from_device"] == "cpu"


def test_the_slot_cap_holds_with_two_runs(tmp_path):
    gpus = torch.cuda.device_count()
    runs = [dataclasses.replace(RUN, seed=seed) for seed in (0, 1)]
    with pytest.raises(ValueError, match="GPU slot"):
        run_all(runs, tmp_path, workers=gpus + 1, device="cuda", workers_per_gpu=1, progress=False)
    outcomes = run_all(runs, tmp_path, workers=2, device="cuda", workers_per_gpu=2, progress=False)
    assert [o.status for o in outcomes] == ["completed", "completed"], [o.error for o in outcomes]
    used = collections.Counter(find_record(tmp_path, o.run_id).provenance["device"] for o in outcomes)
    assert all(d.startswith("cuda:") for d in used) and max(used.values()) <= 2


def test_two_runs_share_one_gpu(tmp_path):
    code = (
        "import sys; from resnet_core.commands.train import main; "
        "sys.exit(main(['--model', 'resnet20', '--recipe', 'quick', '--epochs', '1', '--data', 'synthetic', "
        "'--subset', '1000', '--val-size', '500', '--device', 'cuda', '--quiet', '--seed', sys.argv[1], "
        f"'--results', {str(tmp_path)!r}]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seed)]) for seed in (0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2


TINY_SPACE = '[params.lr]\ntype = "float"\nlow = 0.01\nhigh = 0.2\nlog = true\n'


def test_spawned_study_workers_train_on_their_gpus(tmp_path):
    from resnet_core.commands import study as study_driver  # resnet-study

    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    args = ["--space", str(space), "--data", "synthetic", "--subset", "1000", "--val-size", "500", "--epochs", "1",
            "--set", "depth=8", "--device", "cuda", "--workers", "2", "--workers-per-gpu", "2", "--trials", "2",
            "--sampler", "random", "--results", str(tmp_path), "--study-name", "gpu", "--quiet", "--no-figures"]
    assert study_driver.main(args) == 0
    runs = load_runs(tmp_path)
    assert len(runs) >= 2 and (runs["status"] == "completed").all()
    assert set(runs["provenance.device"]) <= {f"cuda:{i}" for i in range(torch.cuda.device_count())}


def test_dask_local_workers_train_on_the_gpus(tmp_path):
    grid = tmp_path / "gpu.toml"
    grid.write_text('name = "gpu"\nreport = "generic"\nseeds = 2\n[fixed]\ndepth = 8\nbatch_size = 32\n'
                    'eval_batch_size = 200\n[axes]\nresidual = [true]\n')
    argv = [sys.executable, str(REPO / "ablation" / "run.py"), "--grid", str(grid), "--data", "synthetic:400",
            "--val-size", "40", "--epochs", "1", "--device", "auto", "--dask", "local:2",
            "--results", str(tmp_path / "results")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    used = set(load_runs(tmp_path / "results")["provenance.device"])
    expected = {f"cuda:{i}" for i in range(min(2, torch.cuda.device_count()))}
    assert used <= expected and used  # every worker its own GPU, indexed (not the bare current "cuda")


def test_a_fused_group_trains_its_seeds_on_the_gpu_like_runs_alone(tmp_path):
    """bf16 and channels_last by default: each member completes with its run's id and the group in
    its provenance; fp32 members match their runs alone to float noise at the end of one epoch."""
    from resnet_core.fused_fit import fit_group

    runs = [dataclasses.replace(RUN, seed=s) for s in (0, 1, 2)]
    records = fit_group(runs, results_dir=tmp_path / "bf16")
    assert [r.status for r in records] == ["completed"] * 3
    assert [r.run_id for r in records] == [run_id(r) for r in runs]
    assert all(r.provenance["fused_group"]["size"] == 3 and r.provenance["device_type"] == "cuda" for r in records)
    fp32 = [with_train(r, amp="off") for r in runs]
    together = fit_group(fp32, results_dir=tmp_path / "fp32")
    alone = [fit(r, results_dir=tmp_path / "alone") for r in fp32]
    for a, b in zip(together, alone):
        assert a.final["train_loss"] == pytest.approx(b.final["train_loss"], abs=1e-3)


def test_a_gpu_run_gives_the_caller_back_its_cuda_random_state_and_cudnn_benchmark(tmp_path):
    torch.cuda.init()
    torch.manual_seed(1234)
    before_cpu, before_cuda = torch.get_rng_state(), torch.cuda.get_rng_state_all()
    benchmark = torch.backends.cudnn.benchmark = False
    record = fit(with_train(test_eval="never"), results_dir=tmp_path)
    assert record.status == "completed" and record.provenance["cudnn_benchmark"] is True  # on during the run
    assert torch.backends.cudnn.benchmark is benchmark
    assert torch.equal(torch.get_rng_state(), before_cpu)
    assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), before_cuda))
