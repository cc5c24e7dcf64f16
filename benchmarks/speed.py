"""Speed and memory: ours against the peers a user would otherwise pick, side by side in one run.

Peers (``_peers.py``): Hugging Face ``VisionEncoderDecoderModel`` / ``SpeechEncoderDecoderModel`` (a GPT-2
decoder with cross-attention) used directly from transformers, and ClipCap's design (pooled image
embedding -> MLP mapper -> prefix, generation that re-runs the whole sequence every step). Every system
gets the same decoder size (6 layers, width 512, 50,257-token vocabulary; GPT-2's shape), the same frozen
encoder size (ViT-S/16 at 224 px; a Whisper-tiny-sized encoder on 30 s windows), the same inputs and the
same optimiser (AdamW). Weights are random: speed does not depend on them, and nothing is downloaded.

Sections (``--sections``, comma-separated; all by default):

* ``peak``: this machine's fp32 matmul peak (2048x2048, best of several), the denominator of MFU;
* ``train``: training samples/s (forward, backward, optimiser step) for captioning and ASR, with
  ours' LM head on every position (as before ``logits_to_keep``) as a row of its own;
* ``cache``: one epoch through the real data pipeline (files on disk -> dataset -> collator -> step) with
  no feature cache, with a cold cache (epoch 1) and a warm one (epoch 2+), the decoder fully trained or
  with LoRA, and with a ViT-B encoder; a VED epoch over the same files, and the rate of a whole 10-epoch run;
* ``projectors``: every projector (MLP over all 197 tokens, pixel shuffle, average pool, LDP, bilinear pool to
  4x4, the resampler) in one table: prefix tokens, training samples/s cold and from a warm feature cache, greedy
  and beam-4 tokens/s at batch 32, each against VED measured in the same section, and the share of a greedy call
  that the image encoder takes (for VED too);
* ``genprofile``: greedy decoding at batch 1 and 32 with the dynamic KV cache, the static one, and the static one
  under ``torch.compile``; the image encoder's share; its top operators;
* ``generate``: new tokens/s and latency, batch 1 and 32, greedy and beam 4, 20 new tokens each;
* ``loop``: the decoding loop alone (images encoded beforehand), batch 32 greedy, 20 and 60 new tokens;
* ``mfu``: a training step of a SmolLM2-135M-sized decoder (full fine-tune, 8 x 256 tokens): model
  FLOPs/s over the measured peak, ours against the plain ``LlamaForCausalLM`` step;
* ``memory``: peak RSS (CPU; max allocated on GPU) of one training step of a SmolLM2-sized captioner, each
  variant in a fresh process: full / gradient checkpointing / LoRA / both, and the VED peer;
* ``scaling``: ours' training samples/s as batch size (with the MLP, the 4x4 pool and LDP), prefix length and audio
  duration double;
* ``profile``: the top operators of ours' warm-cache captioning step (torch.profiler).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py --out outputs/bench/speed.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py --device cuda --precision bf16 --out speed-bf16.json

Wall times on a shared machine are noisy: read the ratios (measured back to back in one run), not the
absolute numbers, and compare runs only on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import ROOT, Results, load_avg  # noqa: E402

from mmtransfer.bundled import ASSETS

TOKENIZER = str(ASSETS / "tiny-tokenizer")
DECODER = {"model_type": "gpt2", "n_layer": 6, "n_embd": 512, "n_head": 8, "n_positions": 1024,
           "vocab_size": 50257, "bos_token_id": 0, "eos_token_id": 0}
SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 2048,
           "rope_theta": 100000.0, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0}
VIT_S = {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6}
RESAMPLER_32 = {"name": "resampler", "num_queries": 32}
# The token-compressing projectors on ViT-S/16's 14x14 patch grid (the encoder passes the patch tokens).
GRID_PROJECTORS = {
    "MLP, every patch token": {"name": "mlp"},
    "pixel shuffle r=2": {"name": "pixel_shuffle", "factor": 2},
    "2x2 average pool": {"name": "pool", "size": 7},
    "LDP": {"name": "ldp"},
    "bilinear pool to 4x4": {"name": "pool", "size": 4, "mode": "bilinear"},
    "resampler, 32 queries": RESAMPLER_32,
}
VIT_B = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}
WHISPER_TINY = {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
                "num_mel_bins": 80, "max_source_positions": 1500}
CAPTIONS = ["two red circles on the left", "one blue square in the middle of the picture",
            "three green triangles on the right", "a yellow circle at the top left"]
NEW_TOKENS = 20


# ------------------------------------------------------------------------------------------------ setup


class Bench:
    """Device, autocast precision and timing shared by every section."""

    def __init__(self, device: str, precision: str, repeat: int) -> None:
        self.device = torch.device(device)
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.repeat = repeat

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], warmup: int = 1, repeat: int | None = None) -> float:
        """Median wall seconds of ``fn()`` over ``repeat`` calls after ``warmup`` calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat or self.repeat):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def train_step(self, model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        """One AdamW step over ``model``'s trainable parameters (fp16 with a GradScaler). Every system gets
        torch's fused AdamW: what our trainer and the transformers ``Trainer`` (its default) both use."""
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)
        model.train()

        def step() -> None:
            with self.autocast():
                loss = loss_fn()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)

        return step


def decoder_cfg(config: dict[str, Any]) -> dict[str, Any]:
    return {"model": "bench-decoder", "pretrained": False, "config": dict(config), "tokenizer": TOKENIZER}


def ours_captioner(decoder: dict[str, Any] = DECODER, projector: dict[str, Any] | None = None,
                   trainable: dict[str, Any] | None = None, vit: dict[str, Any] = VIT_S) -> Any:
    import mmtransfer

    return mmtransfer.build_model({
        "decoder": decoder_cfg(decoder),
        "image_encoder": {"name": "timm", "model_name": "vit_small_patch16_224", "pretrained": False,
                          "model_kwargs": vit},
        "image_projector": projector or {"name": "mlp"},
        "prompts": {"caption": "<image>Caption:"},
        "trainable": trainable or {"image_encoder": "frozen", "projectors": "full", "decoder": "full"},
    })


def ours_asr(seconds: int = 30, k: int = 4) -> Any:
    import mmtransfer

    return mmtransfer.build_model({
        "decoder": decoder_cfg(DECODER),
        "audio_encoder": {"name": "whisper", "pretrained": False,
                          "hf_config": WHISPER_TINY | {"max_source_positions": 50 * seconds},
                          "feature_extractor": {"chunk_length": seconds}},
        "audio_projector": {"name": "frame_stack", "k": k},
        "prompts": {"transcribe": "<audio>Transcript:"},
        "trainable": {"audio_encoder": "frozen", "projectors": "full", "decoder": "full"},
    })


def images(n: int, seed: int = 0) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(n)]


def waves(n: int, seconds: float, seed: int = 0) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32) for _ in range(n)]


def captions(n: int) -> list[str]:
    return [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]


def to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from mmtransfer.processing import to_device

    return to_device({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels", "image",
                                                              "audio")}, device)


def peer_labels(model: Any, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Target token ids + EOS, right-padded: (labels [B, T] with -100 padding, ClipCap tokens [B, T] 0-padded)."""
    tok = model.tokenizer
    ids = [tok(" " + t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    width = max(map(len, ids))
    labels = torch.full((len(ids), width), -100)
    for i, row in enumerate(ids):
        labels[i, : len(row)] = torch.tensor(row)
    return labels.to(device), labels.clamp(min=0).to(device)


# ------------------------------------------------------------------------------------------------ sections


def cached_features(model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What a warm feature cache hands the model instead of pixels: the frozen encoder's output."""
    with torch.no_grad():
        feats, mask = model.encoders["image"](**batch["image"])
    return {"features": feats, "mask": mask}


def section_peak(b: Bench, res: Results) -> float:
    """Best fp32 2048x2048 matmul FLOP/s (``torch.mm``, the BLAS this torch was built with)."""
    n = 2048
    x, y = torch.randn(n, n, device=b.device), torch.randn(n, n, device=b.device)
    seconds = min(b.time(lambda: torch.mm(x, y), warmup=2, repeat=5) for _ in range(3))
    peak = 2 * n**3 / seconds
    res.add("machine", "fp32 matmul peak (2048x2048)", "-", None, "GFLOP/s", peak / 1e9)
    return peak


def section_train(b: Bench, res: Results, batch_size: int) -> None:
    from _peers import build_clipcap, build_sed, build_ved, vit_config

    import mmtransfer.model as model_module

    bs = batch_size
    task = f"captioning train, bs {bs} (ViT-S/16 224 px frozen; decoder 6x512)"
    ours = ours_captioner().to(b.device)
    batch = to(ours.processor.from_prompts(["<image>Caption:"] * bs, targets=captions(bs), image=images(bs)), b.device)
    pixels = batch["image"]["pixel_values"]
    rows: dict[str, float] = {}
    rows["ours (MLP projector, all 197 ViT tokens)"] = bs / b.time(b.train_step(ours, lambda: ours(**batch).loss))
    # the LM head on every position, as before the ``logits_to_keep`` change (profile: the largest matmul)
    window = model_module._target_window
    model_module._target_window = lambda labels: labels.shape[1]
    try:
        rows["ours, LM head on all positions (before the fix)"] = bs / b.time(
            b.train_step(ours, lambda: ours(**batch).loss))
    finally:
        model_module._target_window = window
    res32 = ours_captioner(projector=RESAMPLER_32).to(b.device)
    rows["ours (resampler, 32 queries)"] = bs / b.time(b.train_step(res32, lambda: res32(**batch).loss))
    for name, model in (("MLP projector", ours), ("resampler, 32 queries", res32)):
        cached = dict(batch, image=cached_features(model, batch))
        rows[f"ours ({name}), warm feature cache"] = bs / b.time(
            b.train_step(model, lambda model=model, cached=cached: model(**cached).loss))
    labels, tokens = peer_labels(ours, captions(bs), b.device)
    ved = build_ved(vit_config(VIT_S), DECODER).to(b.device)
    rows["HF VisionEncoderDecoderModel"] = bs / b.time(
        b.train_step(ved, lambda: ved(pixel_values=pixels, labels=labels).loss))
    clipcap = build_clipcap(ours.encoders["image"].model, DECODER).to(b.device)
    mask = torch.cat([torch.ones(bs, clipcap.prefix_length, device=b.device), (tokens > 0).float()], 1)
    rows["ClipCap design (pooled CLS + MLP mapper, 10 prefix)"] = bs / b.time(
        b.train_step(clipcap, lambda: clipcap.loss(tokens, clipcap.encode_image(pixels), mask)))
    peer = rows["HF VisionEncoderDecoderModel"]
    for method, sps in rows.items():
        res.add(task, method, bs, None, "samples/s", sps, f"VED: {peer:.2f}", ratio_vs_ved=round(sps / peer, 2))

    task = f"ASR train, bs {bs // 2}, 3 s clips (Whisper-tiny-size encoder frozen, 30 s window; decoder 6x512)"
    bs = bs // 2
    ours = ours_asr().to(b.device)
    batch = to(ours.processor.from_prompts(["<audio>Transcript:"] * bs, targets=captions(bs), audio=waves(bs, 3.0),
                              sample_rate=16000), b.device)
    rows = {"ours (frame stacking k=4, valid frames only)": bs / b.time(b.train_step(ours, lambda: ours(**batch).loss))}
    labels, _ = peer_labels(ours, captions(bs), b.device)
    sed = build_sed(WHISPER_TINY, DECODER).to(b.device)
    feats = batch["audio"]["input_features"]
    rows["HF SpeechEncoderDecoderModel"] = bs / b.time(
        b.train_step(sed, lambda: sed(input_features=feats, labels=labels).loss))
    short = ours_asr(seconds=3).to(b.device)
    sbatch = to(short.processor.from_prompts(["<audio>Transcript:"] * bs, targets=captions(bs), audio=waves(bs, 3.0),
                                sample_rate=16000), b.device)
    rows["ours, 3 s window (chunk_length: 3)"] = bs / b.time(b.train_step(short, lambda: short(**sbatch).loss))
    peer = rows["HF SpeechEncoderDecoderModel"]
    for method, sps in rows.items():
        res.add(task, method, bs, None, "samples/s", sps, f"SED: {peer:.2f}", ratio_vs_sed=round(sps / peer, 2))


def cache_epochs(b: Bench, model: Any, task: str, manifest: Path, cache_dir: Path, batch_size: int
                 ) -> tuple[float, float, float]:
    """Samples/s of an epoch (files on disk -> TaskDataset -> Collator -> training step) with no feature
    cache, a cold cache (epoch 1) and a warm one (median of epochs 2 and 3), after one untimed epoch."""
    from mmtransfer.data import Collator, FeatureCache, TaskDataset, make_loader, read_manifest
    from mmtransfer.data.collate import MODEL_INPUTS
    from mmtransfer.tasks import get_task

    encoder = model.encoders[get_task(task).modality]
    rate = getattr(encoder, "sample_rate", None)

    def epoch(cache: FeatureCache | None) -> float:
        samples = read_manifest(str(manifest), task)
        dataset = TaskDataset(samples, task, sample_rate=rate, cached=cache.contains if cache is not None else None)
        loader = make_loader(dataset, Collator(model, task, cache=cache), batch_size, shuffle=True, seed=0)
        current: dict[str, Any] = {}
        step = b.train_step(model, lambda: model(**current).loss)
        b.sync()
        t0 = time.perf_counter()
        for raw in loader:
            current.clear()
            current.update(to({k: v for k, v in raw.items() if k in MODEL_INPUTS}, b.device))
            step()
        b.sync()
        return len(dataset) / (time.perf_counter() - t0)

    epoch(None)  # untimed: one-time costs (allocator, kernel selection) would land on the first epoch
    none = epoch(None)
    cold = epoch(FeatureCache(cache_dir, encoder))
    warm = statistics.median(epoch(FeatureCache(cache_dir, encoder)) for _ in range(2))  # a new run each time
    return none, cold, warm


def ved_epoch(b: Bench, ours: Any, manifest: Path, batch_size: int) -> float:
    """Samples/s of a VED epoch over the same files: the same image decoding and preprocessing as ours
    (PIL + the encoder's transform), then the VED training step on pixels and caption labels."""
    from _peers import build_ved, vit_config

    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    ved = build_ved(vit_config(VIT_S), DECODER).to(b.device)
    current: dict[str, torch.Tensor] = {}
    step = b.train_step(ved, lambda: ved(**current).loss)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()

    def epoch() -> float:
        b.sync()
        t0 = time.perf_counter()
        for i in range(0, len(order), batch_size):
            chunk = [rows[j] for j in order[i : i + batch_size]]
            pixels = ours.encoders["image"].preprocess([str(manifest.parent / r["image"]) for r in chunk])
            labels, _ = peer_labels(ours, [r["text"] for r in chunk], b.device)
            current.update(pixel_values=pixels["pixel_values"].to(b.device), labels=labels)
            step()
        b.sync()
        return len(rows) / (time.perf_counter() - t0)

    epoch()  # untimed, as for ours
    return epoch()


def run_rate(cold: float, warm: float, epochs: int) -> float:
    """Samples/s of a whole run of ``epochs`` epochs: epoch 1 at the cold rate, the rest at the warm one."""
    return epochs / (1 / cold + (epochs - 1) / warm)


def section_cache(b: Bench, res: Results, batch_size: int, epochs: int = 10) -> None:
    """Warm against cold feature-cache epochs, for a captioner and a speech recogniser; for captioning also
    a VED epoch over the same files, and the rate of a whole ``epochs``-epoch run."""
    import soundfile as sf

    from mmtransfer.synthetic import write_shapes

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shapes(root / "shapes", n_train=96, n_test=1, size=224)
        manifest = root / "shapes" / "captions_train.jsonl"
        model = ours_captioner(projector=RESAMPLER_32).to(b.device)
        caption_task = (f"captioning epoch from files (96 PNGs, bs {batch_size}; ViT-S frozen, resampler 32, "
                        "decoder 6x512)")
        runs = {caption_task: cache_epochs(b, model, "captioning", manifest, root / "c1", batch_size)}
        ved = ved_epoch(b, model, manifest, batch_size)
        lora = ours_captioner(projector=RESAMPLER_32,
                              trainable={"image_encoder": "frozen", "projectors": "full", "decoder": "lora"})
        runs[caption_task.replace("decoder 6x512", "decoder 6x512 with LoRA")] = cache_epochs(
            b, lora.to(b.device), "captioning", manifest, root / "c3", batch_size)
        vit_b = ours_captioner(projector=RESAMPLER_32, vit=VIT_B)
        runs[caption_task.replace("ViT-S", "ViT-B/16")] = cache_epochs(
            b, vit_b.to(b.device), "captioning", manifest, root / "c4", batch_size)
        rows = []
        for i, (clip, text) in enumerate(zip(waves(48, 3.0), captions(48))):
            sf.write(root / f"{i}.wav", clip, 16000)
            rows.append(json.dumps({"audio": f"{i}.wav", "text": text}))
        (root / "asr.jsonl").write_text("\n".join(rows) + "\n")
        model = ours_asr().to(b.device)
        runs[f"ASR epoch from files (48 WAVs of 3 s, bs {batch_size // 2}; Whisper-tiny size frozen, 30 s window)"] = \
            cache_epochs(b, model, "asr", root / "asr.jsonl", root / "c2", batch_size // 2)
    for task, (none, cold, warm) in runs.items():
        res.add(task, "no feature cache", "-", None, "samples/s", none, "")
        res.add(task, "feature cache, cold (epoch 1: encode + write)", "-", None, "samples/s", cold,
                f"no cache: {none:.2f}")
        res.add(task, "feature cache, warm (epoch 2+)", "-", None, "samples/s", warm, f"cold: {cold:.2f}",
                warm_over_cold=round(warm / cold, 2), warm_over_no_cache=round(warm / none, 2))
    none, cold, warm = runs[caption_task]
    res.add(caption_task, "HF VisionEncoderDecoderModel, every epoch (no cache)", "-", None, "samples/s", ved,
            f"ours, no cache: {none:.2f}", ratio_ours_no_cache_vs_ved=round(none / ved, 2))
    whole = run_rate(cold, warm, epochs)
    res.add(f"captioning, a whole {epochs}-epoch run (epoch 1 cold, then warm; from the rows above)",
            "ours with the feature cache", "-", None, "samples/s", whole, f"VED: {ved:.2f}",
            ratio_vs_ved=round(whole / ved, 2))


def section_projectors(b: Bench, res: Results, batch_size: int) -> None:
    """One table for the projectors: prefix tokens, training samples/s (the encoder run every step, and from a warm
    feature cache), greedy and beam-4 new tokens/s at batch 32, each against VED measured in the same call."""
    from _peers import build_ved, vit_config

    bs = batch_size
    ved = build_ved(vit_config(VIT_S), DECODER).to(b.device)
    models = {name: ours_captioner(projector=cfg).to(b.device) for name, cfg in GRID_PROJECTORS.items()}
    any_model = next(iter(models.values()))
    batch = to(any_model.processor.from_prompts(["<image>Caption:"] * bs, targets=captions(bs), image=images(bs)),
               b.device)
    pixels = batch["image"]["pixel_values"]
    labels, _ = peer_labels(any_model, captions(bs), b.device)
    ved_train = bs / b.time(b.train_step(ved, lambda: ved(pixel_values=pixels, labels=labels).loss))
    gen_batch = to(any_model.processor.from_prompts(["<image>Caption:"] * 32, image=images(32)), b.device)
    gen_pixels = gen_batch["image"]["pixel_values"]
    ved.eval().generation_config.eos_token_id = None  # every system makes exactly NEW_TOKENS tokens
    fixed = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    ved_gen = {}
    with torch.inference_mode(), b.autocast():
        for beams in (1, 4):
            ved_gen[beams] = 32 * NEW_TOKENS / b.time(
                lambda beams=beams: ved.generate(pixel_values=gen_pixels, num_beams=beams, do_sample=False, **fixed),
                warmup=0, repeat=max(1, b.repeat // 2))
        ved_encode_s = b.time(lambda: ved.encoder(pixel_values=gen_pixels), warmup=0)
    task = f"projectors: captioning, ViT-S/16 224 px frozen, decoder 6x512; train bs {bs}, generate bs 32"
    for name, model in models.items():
        with torch.no_grad():
            tokens = model.encode("image", batch["image"])[0].shape[1]
        cold = bs / b.time(b.train_step(model, lambda model=model: model(**batch).loss))
        cached = dict(batch, image=cached_features(model, batch))
        warm = bs / b.time(b.train_step(model, lambda model=model, cached=cached: model(**cached).loss))
        model.eval()
        gen = {}
        with torch.inference_mode(), b.autocast():
            for beams in (1, 4):
                gen[beams] = 32 * NEW_TOKENS / b.time(
                    lambda model=model, beams=beams: model._generate_batch(
                        gen_batch, num_beams=beams, do_sample=False, temperature=1.0, top_p=1.0, **fixed),
                    warmup=0, repeat=max(1, b.repeat // 2))
            encode_s = b.time(lambda model=model: model.encode("image", gen_batch["image"]), warmup=0)
        res.add(task, f"ours, {name}", bs, None, "train samples/s (cold)", cold, f"VED: {ved_train:.2f}",
                prefix_tokens=tokens, cold_vs_ved=round(cold / ved_train, 2), warm_samples_s=round(warm, 2),
                warm_vs_ved=round(warm / ved_train, 2), greedy_tok_s=round(gen[1], 1),
                greedy_vs_ved=round(gen[1] / ved_gen[1], 2), beam4_tok_s=round(gen[4], 1),
                beam4_vs_ved=round(gen[4] / ved_gen[4], 2),
                greedy_encoder_share=round(encode_s * gen[1] / (32 * NEW_TOKENS), 3), encoder_s=round(encode_s, 3))
    res.add(task, "HF VisionEncoderDecoderModel", bs, None, "train samples/s (cold)", ved_train, "",
            greedy_tok_s=round(ved_gen[1], 1), beam4_tok_s=round(ved_gen[4], 1),
            greedy_encoder_share=round(ved_encode_s * ved_gen[1] / (32 * NEW_TOKENS), 3),
            encoder_s=round(ved_encode_s, 3))


def section_generate(b: Bench, res: Results) -> None:
    from _peers import build_clipcap, build_ved, clipcap_generate_beam, clipcap_generate_greedy, vit_config

    ours = ours_captioner().eval().to(b.device)
    ours32 = ours_captioner(projector=RESAMPLER_32).eval().to(b.device)
    ved = build_ved(vit_config(VIT_S), DECODER).eval().to(b.device)
    clipcap = build_clipcap(ours.encoders["image"].model, DECODER).eval().to(b.device)
    ved.generation_config.eos_token_id = None  # every system makes exactly NEW_TOKENS tokens
    fixed = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    for bs in (1, 32):
        batch = to(ours.processor.from_prompts(["<image>Caption:"] * bs, image=images(bs)), b.device)
        pixels = batch["image"]["pixel_values"]
        for beams in (1, 4):
            def run_ours(batch: dict[str, Any] = batch, beams: int = beams) -> None:
                ours._generate_batch(batch, num_beams=beams, do_sample=False, temperature=1.0, top_p=1.0, **fixed)

            def run_ours32(batch: dict[str, Any] = batch, beams: int = beams) -> None:
                ours32._generate_batch(batch, num_beams=beams, do_sample=False, temperature=1.0, top_p=1.0, **fixed)

            def run_ved(pixels: torch.Tensor = pixels, beams: int = beams) -> None:
                ved.generate(pixel_values=pixels, num_beams=beams, do_sample=False, **fixed)

            def run_clipcap(pixels: torch.Tensor = pixels, beams: int = beams) -> None:
                prefix = clipcap.prefix_embeds(pixels)
                if beams == 1:
                    clipcap_generate_greedy(clipcap, prefix, NEW_TOKENS)
                else:  # ClipCap's beam search takes one image at a time
                    for i in range(len(prefix)):
                        clipcap_generate_beam(clipcap, prefix[i : i + 1], beams, NEW_TOKENS)

            rows = {}
            with torch.inference_mode(), b.autocast():
                for name, fn in (("ours, MLP projector: 197 prefix tokens (HF generate, KV cache)", run_ours),
                                 ("ours, resampler: 32 prefix tokens", run_ours32),
                                 ("HF VisionEncoderDecoderModel", run_ved),
                                 ("ClipCap design (no KV cache)", run_clipcap)):
                    # batch 32 calls take seconds to minutes: one-time costs vanish in them, so no warmup
                    rows[name] = b.time(fn, warmup=0 if bs > 1 else 1, repeat=max(1, b.repeat // 2) if bs > 1
                                        else b.repeat)
            task = f"caption generation, batch {bs}, {'greedy' if beams == 1 else f'beam {beams}'}, {NEW_TOKENS} tokens"
            for name, secs in rows.items():
                tps = bs * NEW_TOKENS / secs
                res.add(task, name, bs, None, "new tokens/s", tps,
                        f"ClipCap: {bs * NEW_TOKENS / rows['ClipCap design (no KV cache)']:.1f}; "
                        f"VED: {bs * NEW_TOKENS / rows['HF VisionEncoderDecoderModel']:.1f}",
                        latency_s=round(secs, 3), vs_clipcap=round(rows["ClipCap design (no KV cache)"] / secs, 2),
                        vs_ved=round(rows["HF VisionEncoderDecoderModel"] / secs, 2))


def section_loop(b: Bench, res: Results, bs: int = 32) -> None:
    """The decoding loop alone: images encoded beforehand (ours: cached features; VED: encoder outputs;
    ClipCap: its prefix), greedy, batch ``bs``, 20 and 60 new tokens."""
    from _peers import build_clipcap, build_ved, clipcap_generate_greedy, vit_config
    from transformers.modeling_outputs import BaseModelOutput

    ours = ours_captioner(projector=RESAMPLER_32).eval().to(b.device)
    ved = build_ved(vit_config(VIT_S), DECODER).eval().to(b.device)
    clipcap = build_clipcap(ours.encoders["image"].model, DECODER).eval().to(b.device)
    ved.generation_config.eos_token_id = None
    batch = to(ours.processor.from_prompts(["<image>Caption:"] * bs, image=images(bs)), b.device)
    pixels = batch["image"]["pixel_values"]
    with torch.inference_mode():
        batch["image"] = cached_features(ours, batch)
        encoded = BaseModelOutput(last_hidden_state=ved.encoder(pixel_values=pixels).last_hidden_state)
        prefix = clipcap.prefix_embeds(pixels)
    for new in (20, 60):
        fixed = {"max_new_tokens": new, "min_new_tokens": new}
        runs = {
            "ours, resampler 32 (HF generate, KV cache)": lambda fixed=fixed: ours._generate_batch(
                batch, num_beams=1, do_sample=False, temperature=1.0, top_p=1.0, **fixed),
            "HF VisionEncoderDecoderModel": lambda fixed=fixed: ved.generate(
                encoder_outputs=encoded, num_beams=1, do_sample=False, **fixed),
            "ClipCap design (no KV cache)": lambda new=new: clipcap_generate_greedy(clipcap, prefix, new),
        }
        with torch.inference_mode(), b.autocast():
            secs = {name: b.time(fn, warmup=1, repeat=2) for name, fn in runs.items()}
        task = f"decoding loop only (images encoded beforehand), batch {bs}, greedy, {new} tokens"
        clip, ved_s = secs["ClipCap design (no KV cache)"], secs["HF VisionEncoderDecoderModel"]
        for name, t in secs.items():
            res.add(task, name, bs, None, "new tokens/s", bs * new / t,
                    f"ClipCap: {bs * new / clip:.0f}; VED: {bs * new / ved_s:.0f}", latency_s=round(t, 3),
                    vs_clipcap=round(clip / t, 2), vs_ved=round(ved_s / t, 2))


def model_flops_per_step(decoder: torch.nn.Module, batch: int, seq: int) -> float:
    """Training FLOPs of one step: 6 x (weights of every Linear, LM head included) per token, plus attention
    scores and values, 12 x layers x width x seq per token (forward 1x, backward 2x)."""
    cfg = decoder.config
    linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    return batch * seq * (6 * linear + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq)


def section_mfu(b: Bench, res: Results, peak: float, batch: int = 8, seq: int = 256) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    import mmtransfer

    ids = torch.randint(0, SMOLLM2["vocab_size"], (batch, seq), device=b.device)
    mask = torch.ones_like(ids)
    ours = mmtransfer.build_model({"decoder": decoder_cfg(SMOLLM2), "trainable": {"decoder": "full"}}).to(b.device)
    flops = model_flops_per_step(ours.decoder, batch, seq)
    s_ours = b.time(b.train_step(ours, lambda: ours(ids, mask, labels=ids).loss), repeat=3)
    cfg = dict(SMOLLM2)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).to(b.device)
    s_plain = b.time(b.train_step(plain, lambda: plain(input_ids=ids, attention_mask=mask, labels=ids).loss),
                     repeat=3)
    task = f"SmolLM2-135M-size decoder, full fine-tune step, {batch} x {seq} tokens"
    for name, secs in (("ours (MultimodalGPT, text only)", s_ours), ("plain LlamaForCausalLM", s_plain)):
        res.add(task, name, batch * seq, None, "MFU (of measured fp32 peak)", flops / secs / peak,
                f"plain HF: {flops / s_plain / peak:.3f}", tflops=round(flops / secs / 1e12, 3),
                step_s=round(secs, 2), model_tflop_per_step=round(flops / 1e12, 3))


MEMORY_VARIANTS = ("full", "full+ckpt", "lora", "lora+ckpt", "full+pool4x4", "full+ldp", "ved")
MEMORY_PROJECTORS = {"full+pool4x4": GRID_PROJECTORS["bilinear pool to 4x4"], "full+ldp": GRID_PROJECTORS["LDP"]}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB. Linux's ``VmHWM`` belongs to this process's own address
    space; ``ru_maxrss`` would carry over the parent's peak through fork + exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def memory_child(variant: str, device: str, batch_size: int) -> dict[str, float]:
    """Peak memory of one training step (runs in a fresh process: the peak only grows)."""
    from _peers import build_ved, vit_config

    b = Bench(device, "fp32", 1)
    bs = batch_size
    if variant == "ved":
        model = build_ved(vit_config(VIT_S), SMOLLM2).to(b.device)
        ours = ours_captioner()  # the small default: only its tokenizer and preprocessing are used
        labels, _ = peer_labels(ours, captions(bs), b.device)
        pixels = ours.processor.preprocess("image", images(bs))["pixel_values"].to(b.device)
        del ours
        step = b.train_step(model, lambda: model(pixel_values=pixels, labels=labels).loss)
    else:
        lora = variant.startswith("lora")
        model = ours_captioner(decoder=SMOLLM2, projector=MEMORY_PROJECTORS.get(variant), trainable={
            "image_encoder": "frozen", "projectors": "full", "decoder": "lora" if lora else "full"}).to(b.device)
        if variant.endswith("+ckpt"):
            model.enable_gradient_checkpointing()
        batch = to(model.processor.from_prompts(["<image>Caption:"] * bs, targets=captions(bs), image=images(bs)),
                   b.device)
        step = b.train_step(model, lambda: model(**batch).loss)
    before = peak_rss_mb()
    if b.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = b.time(step, warmup=1, repeat=1)
    out = {"peak_rss_mb": peak_rss_mb(), "peak_rss_before_step_mb": before,
           "step_s": seconds}
    if b.device.type == "cuda":
        out["max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def section_memory(b: Bench, res: Results, batch_size: int) -> None:
    task = f"peak memory, one training step, bs {batch_size} (ViT-S frozen + SmolLM2-135M-size decoder)"
    names = {"full": "ours, full fine-tune", "full+ckpt": "ours, full + gradient checkpointing",
             "lora": "ours, LoRA r=8", "lora+ckpt": "ours, LoRA + gradient checkpointing",
             "full+pool4x4": "ours, full, bilinear pool to 4x4 (16 prefix tokens)",
             "full+ldp": "ours, full, LDP (49 prefix tokens)",
             "ved": "HF VisionEncoderDecoderModel, full (cross-attention decoder)"}
    results = {}
    for variant in MEMORY_VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", variant, "--device", str(b.device),
               "--batch-size", str(batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory variant {variant} failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "max_allocated_mb" if b.device.type == "cuda" else "peak_rss_mb"
    full = results["full"][key]
    for variant, m in results.items():
        res.add(task, names[variant], batch_size, None, "peak MB (" + ("GPU max allocated" if key != "peak_rss_mb"
                else "process RSS") + ")", m[key], f"ours full: {full:.0f}", step_s=round(m["step_s"], 2),
                peak_rss_before_step_mb=round(m["peak_rss_before_step_mb"], 1))


def section_scaling(b: Bench, res: Results) -> None:
    def sps(model: Any, batch: dict[str, Any], bs: int) -> float:
        return bs / b.time(b.train_step(model, lambda: model(**batch).loss), repeat=max(2, b.repeat // 2))

    for name in ("MLP, every patch token", "bilinear pool to 4x4", "LDP"):
        ours = ours_captioner(projector=GRID_PROJECTORS[name]).to(b.device)
        for bs in (4, 8, 16, 32):
            batch = to(ours.processor.from_prompts(["<image>Caption:"] * bs, targets=captions(bs),
                                                   image=images(bs)), b.device)
            res.add(f"scaling: batch size (captioning, ViT-S frozen, {name})", "ours", bs, None, "samples/s",
                    sps(ours, batch, bs), "")
        del ours
    bs = 8
    for queries in (16, 32, 64, 128):
        model = ours_captioner(projector={"name": "resampler", "num_queries": queries}).to(b.device)
        batch = to(model.processor.from_prompts(["<image>Caption:"] * bs, targets=captions(bs), image=images(bs)),
                   b.device)
        res.add("scaling: prefix length (resampler queries, bs 8)", "ours", queries, None, "samples/s",
                sps(model, batch, bs), "")
    for seconds in (2, 4, 8, 16):
        model = ours_asr(seconds=seconds).to(b.device)
        batch = to(model.processor.from_prompts(["<audio>Transcript:"] * bs, targets=captions(bs),
                                                audio=waves(bs, seconds), sample_rate=16000), b.device)
        res.add("scaling: audio duration (Whisper-tiny size, window = clip, k=4, bs 8)", "ours", f"{seconds:g} s",
                None, "samples/s", sps(model, batch, bs), "")


def section_profile(b: Bench, res: Results, batch_size: int, top: int = 12) -> None:
    """Top operators by self CPU time of ours' captioning step on cached features."""
    from torch.profiler import ProfilerActivity, profile

    model = ours_captioner().to(b.device)
    batch = to(model.processor.from_prompts(["<image>Caption:"] * batch_size, targets=captions(batch_size),
                               image=images(batch_size)), b.device)
    batch["image"] = cached_features(model, batch)
    step = b.train_step(model, lambda: model(**batch).loss)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    print(table)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]:
        res.add(f"profile: ours captioning step on cached features, bs {batch_size}", e.key, batch_size, None,
                "share of self CPU time", e.self_cpu_time_total / total, "", calls=e.count)


def ved_greedy(b: Bench, pixels: torch.Tensor, fixed: dict[str, int]) -> tuple[float, float]:
    """Seconds of VED's greedy call on ``pixels`` and of its image encoder alone (the same ViT-S/16 as ours)."""
    from _peers import build_ved, vit_config

    ved = build_ved(vit_config(VIT_S), DECODER).eval().to(b.device)
    ved.generation_config.eos_token_id = None  # exactly NEW_TOKENS tokens, as ours
    total = b.time(lambda: ved.generate(pixel_values=pixels, num_beams=1, do_sample=False, **fixed), warmup=1)
    return total, b.time(lambda: ved.encoder(pixel_values=pixels), warmup=1)


def section_genprofile(b: Bench, res: Results, top: int = 6) -> None:
    """Greedy decoding (4x4 pool, 16 prefix tokens, 20 new tokens) at batch 1 and 32: tokens/s with transformers'
    dynamic KV cache, with its static one, and with the static one under ``torch.compile`` (inductor; the first
    call, which compiles, is not timed); how much of a call the image encoder takes; and the top operators by
    self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import CompileConfig

    compiled = CompileConfig(mode="default")  # reduce-overhead (its default) means CUDA graphs
    compiled._compile_all_devices = True  # transformers compiles only on accelerators unless told
    model = ours_captioner(projector=GRID_PROJECTORS["bilinear pool to 4x4"]).eval().to(b.device)
    fixed = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    for bs in (1, 32):
        batch = to(model.processor.from_prompts(["<image>Caption:"] * bs, image=images(bs)), b.device)

        def run(cache: str | None = None, batch: dict[str, Any] = batch, **extra: Any) -> None:
            extra = {**extra, "cache_implementation": cache} if cache else extra
            model._generate_batch(batch, num_beams=1, do_sample=False, temperature=1.0, top_p=1.0, **fixed, **extra)

        task = f"greedy generation profile, batch {bs}, {NEW_TOKENS} new tokens (4x4 pool, decoder 6x512)"
        with torch.inference_mode(), b.autocast():
            dynamic_s = b.time(run, warmup=1)
            dynamic = bs * NEW_TOKENS / dynamic_s
            static = bs * NEW_TOKENS / b.time(lambda: run("static", disable_compile=True), warmup=1)  # no auto-compile
            fast = bs * NEW_TOKENS / b.time(lambda: run("static", compile_config=compiled), warmup=2)
            encode_s = b.time(lambda batch=batch: model.encode("image", batch["image"]), warmup=1)
            res.add(task, "dynamic KV cache (the default)", bs, None, "new tokens/s", dynamic, "",
                    encoder_share=round(encode_s / dynamic_s, 3))  # the encoder and its projector
            res.add(task, "static KV cache", bs, None, "new tokens/s", static, f"dynamic: {dynamic:.1f}",
                    vs_dynamic=round(static / dynamic, 2))
            res.add(task, "static KV cache + torch.compile (inductor)", bs, None, "new tokens/s", fast,
                    f"dynamic: {dynamic:.1f}", vs_dynamic=round(fast / dynamic, 2))
            if bs > 1:  # the ceiling: ours can be no faster than its image encoder alone
                ved_s, ved_encode_s = ved_greedy(b, batch["image"]["pixel_values"], fixed)
                res.add(task, "HF VisionEncoderDecoderModel, greedy", bs, None, "new tokens/s", bs * NEW_TOKENS / ved_s,
                        "", encoder_share=round(ved_encode_s / ved_s, 3), ours_vs_ved=round(ved_s / dynamic_s, 2),
                        ceiling_vs_ved=round(ved_s / encode_s, 2))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]:
            res.add(task, e.key, bs, None, "share of self CPU time", e.self_cpu_time_total / total, "", calls=e.count)


# ------------------------------------------------------------------------------------------------ main

SECTIONS = ("peak", "mfu", "memory", "profile", "train", "cache", "generate", "projectors", "genprofile", "loop",
            "scaling")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "speed.json"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype for train/generate (fp32 on CPU: no fast bf16 there)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=4, help="timed calls per measurement (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-child", choices=MEMORY_VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.device, args.batch_size)))
        return
    b = Bench(args.device, args.precision, args.repeat)
    res = Results(f"speed ({args.device}, {args.precision})", args.out, argv)
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    peak = None
    for name in sections:
        print(f"== {name} (load average {load_avg()})", flush=True)
        if name == "peak":
            peak = section_peak(b, res)
        elif name == "train":
            section_train(b, res, args.batch_size)
        elif name == "cache":
            section_cache(b, res, args.batch_size)
        elif name == "generate":
            section_generate(b, res)
        elif name == "projectors":
            section_projectors(b, res, args.batch_size)
        elif name == "genprofile":
            section_genprofile(b, res)
        elif name == "loop":
            section_loop(b, res)
        elif name == "mfu":
            section_mfu(b, res, peak if peak is not None else section_peak(b, res))
        elif name == "memory":
            section_memory(b, res, args.batch_size // 2)
        elif name == "scaling":
            section_scaling(b, res)
        elif name == "profile":
            section_profile(b, res, args.batch_size)
    res.finish()


if __name__ == "__main__":
    main()
