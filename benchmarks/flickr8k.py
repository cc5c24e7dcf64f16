"""Flickr8k captioning: real photos, open vocabulary; 6,091 training photos x 5 captions, scored on 1,000 dev photos.

Parts (``--parts``, in this order; each writes its rows to the JSON as it finishes):

* ``retrieval``: nearest-neighbour caption retrieval on the same frozen EfficientNet-Lite0 features (cosine on
  mean-pooled features; each dev photo gets the first caption of its most similar training photo).
* ``ours``: ``mmtransfer/recipes/flickr8k-caption.yaml`` (frozen EfficientNet-Lite0, its 7x7 grid pooled to 4x4
  tokens + MLP, SmolLM2-135M-Instruct + LoRA r=16), ``--steps`` steps of 16; its final eval reports the media gain
  (the same dev photos scored with black images). ``--set "model.image_projector={name: mlp}"`` runs the MLP
  on all 49 tokens instead.
* ``clipcap``: ClipCap's design at the same budget (same steps, batch size, learning rates, the same decoder with
  the same LoRA): the pooled feature -> ClipCap's MLP mapper -> 10 prefix tokens (``_peers.ClipCap``), trained on
  the cached pooled features; greedy decoding with the decoder's own ``generate``.

The frozen encoder's features are cached once (``<work>/../feature_cache`` for ours, ``<work>/pooled.pt`` for the
peers) and reused across parts and runs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/flickr8k.py --out outputs/bench/flickr8k/results.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CONFIGS, Results, base_parser, link_data, require, run_recipe, setup, write_jsonl

TASK = "Flickr8k dev captions (1,000 photos x 5 refs)"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pooled(work: Path, rows: dict[str, list[dict]]) -> dict:
    """Mean-pooled EfficientNet-Lite0 features [N, 1280] per split, computed once into ``work/pooled.pt``."""
    import torch

    import mmtransfer

    path = work / "pooled.pt"
    if path.exists():
        return torch.load(path)
    enc = mmtransfer.build_encoder("timm", model_name="efficientnet_lite0", pretrained=True).eval()
    out = {}
    with torch.no_grad():
        for split, rs in rows.items():
            feats = []
            for i in range(0, len(rs), 64):
                x, mask = enc(**enc.preprocess([str(work / r["image"]) for r in rs[i : i + 64]]))
                feats.append(x.mean(1))
            out[split] = torch.cat(feats)
            print(f"pooled features: {split} {tuple(out[split].shape)}", flush=True)
    torch.save(out, path)
    return out


def retrieval(feats: dict, train: list[dict], dev: list[dict]) -> list[str]:
    import torch

    a = torch.nn.functional.normalize(feats["train"], dim=-1)
    b = torch.nn.functional.normalize(feats["dev"], dim=-1)
    return [train[j]["captions"][0] for j in (b @ a.T).argmax(1).tolist()]


def clipcap(feats: dict, train: list[dict], dev: list[dict], steps: int, batch: int, seed: int
            ) -> tuple[list[str], float]:
    """ClipCap (MLP mapper, 10 prefix tokens) on SmolLM2 + LoRA r=16, ``steps`` steps of ``batch`` captions."""
    import torch
    from _peers import ClipCap
    from peft import LoraConfig, get_peft_model

    from mmtransfer.config import DecoderConfig
    from mmtransfer.model.decoder import load_decoder, load_tokenizer

    torch.manual_seed(seed)
    cfg = DecoderConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct")
    lm, tok = load_decoder(cfg), load_tokenizer(cfg)
    lm = get_peft_model(lm, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    model = ClipCap(torch.nn.Identity(), feats["train"].shape[1], lm, prefix_length=10)
    params = [{"params": model.clip_project.parameters(), "lr": 1e-3},
              {"params": [p for p in lm.parameters() if p.requires_grad], "lr": 1e-3}]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    pairs = [(i, c) for i, r in enumerate(train) for c in r["captions"]]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pairs), generator=g).tolist()
    eos = tok.eos_token_id
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        chunk = [pairs[order[(step * batch + k) % len(order)]] for k in range(batch)]
        ids = [tok(" " + c)["input_ids"] + [eos] for _, c in chunk]
        t = max(map(len, ids))
        tokens = torch.tensor([x + [eos] * (t - len(x)) for x in ids])
        labels = torch.tensor([x + [-100] * (t - len(x)) for x in ids])
        mask = torch.cat([torch.ones(batch, 10), (labels != -100).float()], 1)
        prefix = model.prefix_embeds(prefix=feats["train"][[i for i, _ in chunk]])
        logits = lm(inputs_embeds=torch.cat([prefix, model.wte(tokens)], 1), attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, 9:-1].reshape(-1, logits.shape[-1]), labels.flatten())
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 20 == 0:
            print(f"clipcap step {step}: loss {loss.item():.3f}", flush=True)
    secs = time.perf_counter() - t0
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(dev), 32):
            embeds = model.prefix_embeds(prefix=feats["dev"][i : i + 32])
            out = lm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                              max_new_tokens=20, do_sample=False, pad_token_id=eos, eos_token_id=eos)
            preds += [t.strip().split("\n")[0] for t in tok.batch_decode(out, skip_special_tokens=True)]
    return preds, secs


def projector_label(overrides: list[str]) -> str:
    """What the image projector is after ``model.image_projector.*`` overrides (the recipe's: bilinear pool to
    4x4 + MLP)."""
    import yaml

    cfg: dict = {"name": "pool", "size": 4, "mode": "bilinear"}
    for key, value in (o.split("=", 1) for o in overrides):
        if key == "model.image_projector":
            cfg = yaml.safe_load(value)
        elif key.startswith("model.image_projector."):
            cfg[key.removeprefix("model.image_projector.")] = yaml.safe_load(value)
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name == "mlp":
        return "MLP (49 tokens)"
    if name == "pool":
        size = int(cfg.get("size", 2))
        return f"{cfg.get('mode', 'avg')} pool to {size}x{size} + MLP ({size * size} tokens)"
    return name + "".join(f" {k}={v}" for k, v in cfg.items())


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "flickr8k")
    p.add_argument("--parts", default="retrieval,ours,clipcap")
    p.add_argument("--steps", type=int, default=600, help="training steps of 16 captions (ours and ClipCap)")
    p.add_argument("--max-eval", type=int, default=1000, help="dev photos scored")
    args = p.parse_args()
    setup(args)
    from mmtransfer.metrics import bleu4, cider_d

    src = require(Path(args.data) / "flickr8k", "flickr8k")
    work = Path(args.work)
    link_data(work, "images", src / "images")
    train, dev = read_rows(src / "train.jsonl"), read_rows(src / "dev.jsonl")[: args.max_eval]
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "dev.jsonl", dev)
    refs = [r["captions"] for r in dev]
    parts = args.parts.split(",")
    res = Results("flickr8k", args.out)
    size = f"{len(train)} photos x 5 caps, {args.steps} steps (bs 16)"
    if "retrieval" in parts or "clipcap" in parts:
        feats = pooled(work, {"train": train, "dev": dev})
    if "retrieval" in parts:
        ret = retrieval(feats, train, dev)
        res.add(TASK, "nearest-neighbour caption retrieval (same frozen features)", len(train), None, "CIDEr-D",
                cider_d(ret, refs), "", bleu4=round(bleu4(ret, refs), 4), examples=ret[:5])
    if "ours" in parts:
        last, secs = run_recipe(CONFIGS / "flickr8k-caption.yaml", [
            f"data.0.train={work / 'train.jsonl'}", f"data.0.eval={work / 'dev.jsonl'}",
            f"output_dir={work / 'runs' / 'ours'}", f"stages.0.steps={args.steps}",
            f"feature_cache={work.parent / 'feature_cache'}",
        ])  # then --set
        res.add(TASK, f"EfficientNet-Lite0 (frozen) + {projector_label(args.set)} + SmolLM2 LoRA r=16", size,
                secs, "CIDEr-D", last.get("captioning/cider_d", float("nan")), "see retrieval / ClipCap rows",
                bleu4=last.get("captioning/bleu4"), metrics=last, eval_included_in_train_s=True)
    if "clipcap" in parts:
        preds, secs = clipcap(feats, train, dev, args.steps, 16, seed=0)
        res.add(TASK, "ClipCap design: pooled feature -> MLP -> 10 prefix tokens, SmolLM2 LoRA r=16", size, secs,
                "CIDEr-D", cider_d(preds, refs), "", bleu4=round(bleu4(preds, refs), 4), examples=preds[:5])
    res.finish()


if __name__ == "__main__":
    main()
