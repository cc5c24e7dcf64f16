"""FSDP2 on the CPU (two gloo processes, tiny models): the same losses as DDP and as one process at every step, a
gathered final model equal to theirs that loads on one process, exact resume after a kill, ranks with different
modalities, LoRA on the sharded decoder, and each rank holding about half of the parameter bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import mmtransfer
from mmtransfer.bundled import ASSETS, RECIPES
from mmtransfer.train import load_train_config, train
from tests.runs import write_mixed_pair
from tests.test_train import _losses, _overrides

ROOT = Path(__file__).resolve().parents[1]
RECIPE = RECIPES / "captioning-tiny.yaml"

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmtransfer.synthetic import write_all

    return write_all(tmp_path_factory.mktemp("synthetic"), n_train=48, n_test=8)


def _run(config: Path, out: Path, overrides: list[str], fsdp: bool, *extra: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                        "ACCELERATE_USE_FSDP": "true" if fsdp else "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "fsdp_worker.py"), str(config), str(out), *overrides, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# no dropout and a constant learning rate, so that one process accumulating two batches per step takes the same
# steps as two ranks with one batch each
EXACT = ["model.decoder.config.resid_pdrop=0.0", "model.decoder.config.embd_pdrop=0.0",
         "model.decoder.config.attn_pdrop=0.0", "optim.schedule=constant", "optim.warmup_steps=0"]


def _args(synthetic: Path, out: Path, steps: int = 4) -> list[str]:
    return _overrides(RECIPE, synthetic, out, steps) + ["batch_size=12", "media_gain=false", *EXACT]


def test_fsdp_trains_like_ddp_saves_the_full_model_and_shards_the_parameters(synthetic: Path, tmp_path: Path) -> None:
    _run(RECIPE, tmp_path / "ddp-sums", _args(synthetic, tmp_path / "ddp"), fsdp=False)
    proc = _run(RECIPE, tmp_path / "fsdp-sums", _args(synthetic, tmp_path / "fsdp"), fsdp=True)
    ddp, fsdp = dict(_losses(tmp_path / "ddp")), dict(_losses(tmp_path / "fsdp"))
    assert sorted(ddp) == sorted(fsdp) == [1, 2, 3, 4]
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-5, abs=1e-6), step
    a, b = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("ddp", "fsdp"))
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    # one process, two batches accumulated per step, sees rank 0's batch at every other micro-step (the sampler
    # deals batch i to rank i % 2) and takes the same updates
    single = _args(synthetic, tmp_path / "single", 8) + ["optim.grad_accum=2"]
    train(load_train_config(RECIPE, single))
    micro = dict(_losses(tmp_path / "single"))
    for step in fsdp:
        assert fsdp[step] == pytest.approx(micro[2 * step - 1], rel=1e-5, abs=1e-6), step
    c = load_file(tmp_path / "single" / "final" / "model.safetensors")
    for name in (n for n in a if not n.startswith("encoders.")):
        torch.testing.assert_close(b[name], c[name], rtol=1e-4, atol=1e-5, msg=name)
    for name in (n for n in a if n.startswith("encoders.") and "running_" not in n and "num_batches" not in n):
        # the trained ResNet (BatchNorm) differs between one process and two by up to 5e-4 after 4 Adam steps,
        # for DDP as for FSDP (which agree to 2e-5 above); its cause is not pinned down
        torch.testing.assert_close(b[name], c[name], rtol=0, atol=1e-3, msg=name)
    model = mmtransfer.load(tmp_path / "fsdp" / "final")  # one process opens the gathered save
    assert not any(hasattr(p, "to_local") for p in model.parameters())
    ranks = [json.loads((tmp_path / "fsdp-sums" / f"rank{r}.json").read_text()) for r in (0, 1)]
    print(proc.stdout)
    for rank in ranks:
        assert rank["sharded"]
        assert 0.45 < rank["local_bytes"] / rank["total_bytes"] < 0.55, rank
    assert sum(r["local_bytes"] for r in ranks) == pytest.approx(ranks[0]["total_bytes"], rel=0.01)


def test_fsdp_resume_after_a_kill_gives_the_same_losses(synthetic: Path, tmp_path: Path) -> None:
    args = _args(synthetic, tmp_path / "full", 6) + ["save_every=2"]
    _run(RECIPE, tmp_path / "s", args, fsdp=True)
    cut = _args(synthetic, tmp_path / "cut", 6) + ["save_every=2"]
    _run(RECIPE, tmp_path / "s1", cut, True, "--stop-after", "4")
    assert not (tmp_path / "cut" / "final").exists()
    _run(RECIPE, tmp_path / "s2", cut, True, "--resume")
    resumed, full = dict(_losses(tmp_path / "cut")), dict(_losses(tmp_path / "full"))
    assert sorted(resumed) == sorted(full) == list(range(1, 7))
    for step in full:
        assert resumed[step] == pytest.approx(full[step], rel=1e-6), step


def test_fsdp_lora_with_one_rank_text_only_and_the_other_with_images_and_audio(synthetic: Path,
                                                                               tmp_path: Path) -> None:
    """Also: evaluation (generation, eval loss, media gain) of the sharded model, and its best/ save."""
    write_mixed_pair(synthetic)
    recipe = yaml.safe_load((RECIPES / "chat-tiny.yaml").read_text())
    recipe["model"]["decoder"]["tokenizer"] = str(ASSETS / "tiny-tokenizer")
    recipe["model"]["trainable"] = {"image_encoder": "frozen", "audio_encoder": "full", "projectors": "full",
                                    "decoder": "lora", "lora": {"r": 4, "alpha": 8}}
    recipe |= {"data": [{"task": "chat", "train": str(synthetic / "chat_pair.jsonl"),
                         "eval": str(synthetic / "chat_pair.jsonl")}], "batch_size": 1,
               "stages": [{"name": "train", "steps": 3}], "output_dir": str(tmp_path / "run"), "eval_every": 0,
               "log_every": 1}
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(recipe))
    _run(tmp_path / "pair.yaml", tmp_path / "sums", [], fsdp=True)
    assert [s for s, _ in _losses(tmp_path / "run")] == [1, 2, 3]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    [evaluation] = [r["eval"] for r in log if "eval" in r]  # generated in lockstep on both ranks, media gain too
    assert {"chat/loss", "chat/gain/image/loss", "chat/gain/audio/loss"} <= set(evaluation)
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
    model = mmtransfer.load(tmp_path / "run" / "final")
    lora_b = {n: p for n, p in model.decoder.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # trained from zero, sharded, saved gathered
