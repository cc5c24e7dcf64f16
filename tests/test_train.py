"""Training: every recipe YAML validates, each tiny recipe trains (loss down, checkpoint loads, eval
gives its metric), resume continues the same run, non-finite losses stop the run, 2-process DDP agrees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import mmtransfer
from mmtransfer.bundled import ASSETS, RECIPES
from mmtransfer.config import ConfigError
from mmtransfer.synthetic import write_all
from mmtransfer.train import NonFiniteLossError, load_train_config, train
from tests.runs import interrupt_then_resume, write_mixed_pair

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(RECIPES.glob("*.yaml"))
TINY = [c for c in CONFIGS if c.stem.endswith("-tiny")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("synthetic"), n_train=48, n_test=8)


def _overrides(cfg_path: Path, data_dir: Path, out: Path, steps: int) -> list[str]:
    """Point a recipe at the test's small synthetic data, a temp output dir and a few steps."""
    raw = load_train_config(cfg_path)
    items = [f"output_dir={out}", "eval_every=0", "log_every=1"]
    for i, ds in enumerate(yaml.safe_load(cfg_path.read_text())["data"]):  # paths as the recipe writes them
        for split in ("train", "eval"):
            if ds.get(split):
                items.append(f"data.{i}.{split}={data_dir / Path(ds[split]).relative_to('data/synthetic')}")
        items.append(f"data.{i}.max_eval_samples=8")
    per_stage = max(1, steps // len(raw.stages))
    items += [f"stages.{i}.steps={per_stage}" for i in range(len(raw.stages))]
    return items


def _losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("path", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_recipe_config_validates(path: Path) -> None:
    cfg = load_train_config(path)
    assert cfg.data and cfg.stages
    for ds in cfg.data:
        assert mmtransfer.tasks.get_task(ds.task).name == ds.task
    if cfg.fallback:  # the recipe run when pretrained weights are missing must itself need none
        fallback = load_train_config(cfg.fallback)
        assert not fallback.fallback and fallback.model.decoder.pretrained is False


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((TINY[0]).read_text().replace("batch_size:", "batch_sise:"))
    with pytest.raises(ConfigError, match="batch_sise"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="does not name a field"):
        load_train_config(TINY[0], ["stages.7.steps=1"])


@pytest.mark.parametrize("path", TINY, ids=[c.stem for c in TINY])
def test_tiny_recipe_trains_saves_and_evaluates(path: Path, synthetic: Path, tmp_path: Path) -> None:
    steps = 12
    cfg = load_train_config(path, _overrides(path, synthetic, tmp_path / "run", steps))
    metrics = train(cfg)
    losses = [loss for _, loss in _losses(tmp_path / "run")]
    assert len(losses) >= steps - 1
    k = max(2, len(losses) // 4)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k  # the loss goes down
    for ds in cfg.data:
        if ds.eval:
            task = mmtransfer.tasks.get_task(ds.task)
            assert f"{ds.name or ds.task}/{task.primary_metric}" in metrics
    model = mmtransfer.load(tmp_path / "run" / "final")
    assert isinstance(model, mmtransfer.MultimodalGPT)
    assert (tmp_path / "run" / "curves.png").exists()


def test_resume_after_interrupt_continues_the_same_run(synthetic: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = RECIPES / "asr-tiny.yaml"
    full = load_train_config(path, _overrides(path, synthetic, tmp_path / "a", 6) + ["save_every=3"])
    train(full)

    cfg = load_train_config(path, _overrides(path, synthetic, tmp_path / "b", 6) + ["save_every=3"])
    interrupt_then_resume(cfg, monkeypatch, at_batch=5)  # during step 5: after the step-3 checkpoint
    resumed = {s: loss for s, loss in _losses(tmp_path / "b")}  # later lines win: the resumed ones
    assert resumed == dict(_losses(tmp_path / "a"))


def test_non_finite_loss_skips_then_stops(synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = RECIPES / "classification-tiny.yaml"
    cfg = load_train_config(path, _overrides(path, synthetic, tmp_path / "nan", 10) + ["max_nonfinite=3"])
    real_forward = mmtransfer.MultimodalGPT.forward

    def nan_forward(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = real_forward(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(mmtransfer.MultimodalGPT, "forward", nan_forward)
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        train(cfg)
    assert not (tmp_path / "nan" / "final").exists()


@pytest.mark.skipif(not hasattr(torch.distributed, "is_available") or not torch.distributed.is_available(),
                    reason="torch.distributed unavailable")
def test_two_process_ddp_on_cpu_ranks_agree(synthetic: Path, tmp_path: Path) -> None:
    """Each rank trains on its own half of every epoch (48 samples in batches of 12: two batches per rank and
    epoch, four steps = two epochs), and the weights agree."""
    path = RECIPES / "captioning-tiny.yaml"
    overrides = _overrides(path, synthetic, tmp_path / "ddp", 4) + ["batch_size=12"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "ddp_worker.py"), str(path), str(tmp_path / "sums"), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = [json.loads((tmp_path / "sums" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sums[0]["params"] == sums[1]["params"]
    assert sums[0]["world_size"] == 2
    manifest = (synthetic / "shapes" / "captions_train.jsonl").read_text().splitlines()
    every_line = set(range(1, len(manifest) + 1))
    assert len(every_line) == 48
    for epoch in (0, 1):
        seen = []
        for rank in sums:
            batches = [b["lines"] for b in rank["samples"] if b["epoch"] == epoch]
            assert [len(b) for b in batches] == [12, 12], (epoch, rank["samples"])
            seen.append({line for batch in batches for line in batch})
        assert not seen[0] & seen[1], f"epoch {epoch}: both ranks trained on lines {sorted(seen[0] & seen[1])}"
        assert seen[0] | seen[1] == every_line, f"epoch {epoch}: no rank saw {sorted(every_line - seen[0] - seen[1])}"


@pytest.mark.skipif(not hasattr(torch.distributed, "is_available") or not torch.distributed.is_available(),
                    reason="torch.distributed unavailable")
def test_ddp_steps_where_one_rank_is_text_only_and_the_other_has_images_and_audio(
    synthetic: Path, tmp_path: Path
) -> None:
    """Two conversations, one per rank each step: the ranks run different modalities, yet every module runs on
    both (no hang, no unused-parameter error) and their weights agree after each step."""
    write_mixed_pair(synthetic)
    recipe = yaml.safe_load((RECIPES / "chat-tiny.yaml").read_text())
    recipe["model"]["decoder"]["tokenizer"] = str(ASSETS / "tiny-tokenizer")
    recipe |= {"data": [{"task": "chat", "train": str(synthetic / "chat_pair.jsonl")}], "batch_size": 1,
               "stages": [{"name": "train", "steps": 3}], "output_dir": str(tmp_path / "run"), "eval_every": 0}
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(recipe))
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "pair.yaml"), str(tmp_path / "sums")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "sums" / f"rank{r}.json").read_text()) for r in (0, 1)]
    steps = list(zip(*(r["kinds"] for r in ranks)))
    assert len(steps) == 3 and all(sorted(step) == [[], ["audio", "image"]] for step in steps)
    assert ranks[0]["params"] == ranks[1]["params"]


def _first_in_each_block(model: mmtransfer.MultimodalGPT) -> list[torch.nn.Module]:
    """The module each decoder layer and image encoder block runs first: its pre-hook fires in the forward pass
    and again when the backward pass recomputes the block (the recomputation may stop before a block's end)."""
    decoder = model.decoder
    layers = decoder.transformer.h if hasattr(decoder, "transformer") else decoder.model.layers  # GPT-2, Llama
    firsts = [layer.ln_1 if hasattr(layer, "ln_1") else layer.input_layernorm for layer in layers]
    return firsts + [block.norm1 for block in model.encoders["image"].model.blocks]


def _checkpointed_step(cfg: dict, checkpointing: bool) -> tuple[list[int], dict[str, torch.Tensor]]:
    """One training step of a fresh model: ([blocks run in the forward pass, in the backward], gradients)."""
    torch.manual_seed(0)
    model = mmtransfer.build_model(cfg).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    calls: list[int] = []
    for first in _first_in_each_block(model):
        first.register_forward_pre_hook(lambda *_: calls.append(1))
    red = [Image.new("RGB", (32, 32), "red")]
    batch = model.processor.from_prompts(["<image> what?"], targets=[" red"], image=red)
    loss = model(**batch).loss
    forward = len(calls)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [forward, len(calls) - forward], grads


def test_gradient_checkpointing_recomputes_every_block_with_the_same_gradients(decoder_arch: str) -> None:
    from tests.tiny_models import tiny_model_config

    cfg = tiny_model_config(decoder_arch, audio_encoder=None, audio_projector=None,
                            trainable={"decoder": "full", "image_encoder": "full"})
    cfg["decoder"]["config"] = cfg["decoder"]["config"] | {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    runs_off, grads_off = _checkpointed_step(cfg, False)
    runs_on, grads_on = _checkpointed_step(cfg, True)
    # 2 decoder layers + 2 ViT blocks run once in the forward pass; with checkpointing, again in the backward
    assert (runs_off, runs_on) == ([4, 0], [4, 4])
    assert grads_off.keys() == grads_on.keys()
    assert any(n.startswith("encoders.image.") for n in grads_off) and any(n.startswith("decoder.") for n in grads_off)
    for name in grads_off:
        assert torch.allclose(grads_off[name], grads_on[name], atol=1e-6), name


def test_gradient_checkpointing_on_an_encoder_without_it_fails_clearly(tmp_path: Path) -> None:
    """The fbank encoder has no checkpointing hook: asking for it is an error, not a silent no-op."""
    from tests.tiny_models import tiny_model_config

    model = mmtransfer.build_model(tiny_model_config("gpt2"))  # tiny ViT + fbank
    with pytest.raises(NotImplementedError, match="audio encoder FbankEncoder has no layers to recompute"):
        model.enable_gradient_checkpointing()
    path = RECIPES / "asr-tiny.yaml"
    cfg = load_train_config(path, ["gradient_checkpointing=true", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(NotImplementedError, match="FbankEncoder has no layers to recompute.*checkpointing off"):
        train(cfg)
    assert not (tmp_path / "run" / "final").exists()


def test_the_fused_optimizer_takes_the_same_steps_as_plain_adamw(tiny_model: mmtransfer.MultimodalGPT) -> None:
    from mmtransfer.config import TrainableConfig
    from mmtransfer.train.config import OptimConfig
    from mmtransfer.train.optim import make_optimizer, param_groups

    tiny_model.set_trainable(TrainableConfig(decoder="full", projectors="full"))
    red = [Image.new("RGB", (32, 32), "red")]
    batch = tiny_model.processor.from_prompts(["<image> what?"], targets=[" red"], image=red)
    start = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    after = []
    for fused in (True, False):
        tiny_model.load_state_dict(start, strict=False)
        cfg = OptimConfig(schedule="constant")
        opt, _ = make_optimizer(tiny_model, cfg, lr=1e-3, steps=3)
        assert opt.defaults["fused"] is True  # what the trainer builds on CPU
        if not fused:  # fresh groups: the trainer's would carry fused=True into the plain optimiser
            opt = torch.optim.AdamW(param_groups(tiny_model, cfg, lr=1e-3), betas=cfg.betas, foreach=False)
            assert not opt.param_groups[0]["fused"]
        for _ in range(3):
            tiny_model.eval()(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        after.append({n: p.detach().clone() for n, p in tiny_model.named_parameters() if p.requires_grad})
    moved = [n for n in after[0] if not torch.equal(after[0][n], start[n])]
    assert any(n.startswith("decoder.") for n in moved) and any(n.startswith("projectors.image") for n in moved)
    for name in after[0]:
        # 1e-5 is a hundredth of one step: the attention key bias has a gradient of zero up to rounding
        # (softmax ignores a shift shared by all keys), and Adam scales that rounding noise up to the lr
        assert torch.allclose(after[0][name], after[1][name], atol=1e-5), name


def test_a_stage_that_unfreezes_a_cached_encoder_trains_it_from_its_inputs(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feature cache serves a frozen encoder's outputs; once a later stage trains that encoder, its batches
    must carry the encoder's inputs again, or the encoder would get no gradient and silently stay as it was."""
    from mmtransfer.train import loop

    path = RECIPES / "asr-tiny.yaml"
    cfg = load_train_config(path, _overrides(path, synthetic, tmp_path / "run", 4) + [
        f"feature_cache={tmp_path / 'cache'}", "model.trainable.audio_encoder=frozen",
        "stages=[{name: frozen, steps: 3}, {name: thawed, steps: 3, trainable: {audio_encoder: full}}]"])
    built = {}
    real_build = loop.build_model

    def build(model_cfg):  # noqa: ANN001, ANN202
        built["model"] = real_build(model_cfg)
        built["start"] = {n: p.detach().clone() for n, p in built["model"].encoders["audio"].named_parameters()}
        return built["model"]

    monkeypatch.setattr(loop, "build_model", build)
    train(cfg)
    assert any((tmp_path / "cache").rglob("*")), "the frozen stage used the cache"
    changed = [n for n, p in built["model"].encoders["audio"].named_parameters()
               if not torch.equal(p.detach(), built["start"][n])]
    assert changed, "the thawed stage never trained the encoder: its batches still came from the cache"


def test_a_stage_may_not_thaw_a_cached_encoder_under_dataloader_workers(synthetic: Path, tmp_path: Path) -> None:
    path = RECIPES / "asr-tiny.yaml"
    with pytest.raises(ConfigError, match=r"stages\[1\]\.trainable\.audio_encoder: 'last:1' trains an encoder whose "
                                          r"outputs feature_cache serves.*num_workers: 2"):
        load_train_config(path, _overrides(path, synthetic, tmp_path / "run", 4) + [
            f"feature_cache={tmp_path / 'cache'}", "model.trainable.audio_encoder=frozen", "num_workers=2",
            "stages=[{name: frozen, steps: 3}, {name: thawed, steps: 3, trainable: {audio_encoder: 'last:1'}}]"])
