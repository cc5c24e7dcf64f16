"""Captioning and VQA from ImageNet EfficientNet-Lite0 features into SmolLM2-135M-Instruct: synthetic shapes and
coco-mini.

* ``shapes``: ``mmtransfer/recipes/shapes-efficientnet.yaml`` on ``mmtransfer.synthetic.write_shapes`` data
  (400 train / 60 test scenes; three colour-shape pairs appear only in test, so the test split measures
  compositional generalisation). One run over a 1:1 captioning + VQA mixture; reports BLEU-4 / CIDEr-D on
  the test captions and VQA accuracy on the test questions. Peers in the same run, on the same frozen
  features: nearest-neighbour caption retrieval (cosine on mean-pooled EfficientNet features; it can only
  return training captions, so it can never name a held-out pair) and the per-question majority answer.
* ``coco``: ``mmtransfer/recipes/coco-mini-caption.yaml``: 64 coco-mini photos to train, 16 to test, 5
  human captions each. Peer: the same nearest-neighbour retrieval. A smoke benchmark: expect small numbers.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/shapes.py --out outputs/bench/shapes/results.json
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CONFIGS, Results, base_parser, link_data, require, run_recipe, setup, write_jsonl


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pooled_features(encoder, paths: list[Path]):
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            feats, _ = encoder(**encoder.preprocess([str(p) for p in paths[i : i + 32]]))
            out.append(torch.nn.functional.normalize(feats.mean(1), dim=-1))
    return torch.cat(out)


def retrieval_captions(train: list[dict], test: list[dict], root: Path, size: int | None) -> list[str]:
    """Each test image gets the first caption of its most similar training image (frozen features)."""
    import mmtransfer

    kwargs = {"data_config": {"input_size": [3, size, size], "crop_pct": 1.0}} if size else {}
    enc = mmtransfer.build_encoder("timm", model_name="efficientnet_lite0", pretrained=True, **kwargs).eval()
    a = pooled_features(enc, [root / r["image"] for r in train])
    b = pooled_features(enc, [root / r["image"] for r in test])
    nearest = (b @ a.T).argmax(1).tolist()
    caps = [r.get("text", r.get("captions")) for r in train]
    return [c if isinstance(c, str) else c[0] for c in (caps[j] for j in nearest)]


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "shapes")
    p.add_argument("--parts", default="shapes,coco")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--coco-steps", type=int, default=40)
    args = p.parse_args()
    setup(args)
    from mmtransfer.metrics import bleu4, cider_d, vqa_accuracy
    from mmtransfer.synthetic import write_shapes

    work = Path(args.work)
    parts = set(args.parts.split(","))
    res = Results("shapes", args.out)
    if "shapes" in parts:
        data = work / "data"
        write_shapes(data)
        cap_train, cap_test = read_rows(data / "captions_train.jsonl"), read_rows(data / "captions_test.jsonl")
        vqa_train, vqa_test = read_rows(data / "vqa_train.jsonl"), read_rows(data / "vqa_test.jsonl")
        ret = retrieval_captions(cap_train, cap_test, data, 128)
        refs = [[r["text"]] for r in cap_test]
        r_bleu, r_cider = bleu4(ret, refs), cider_d(ret, refs)
        majority = {q: Counter(r["answer"] for r in vqa_train if r["question"] == q).most_common(1)[0][0]
                    for q in {r["question"] for r in vqa_train}}
        maj = vqa_accuracy([majority.get(r["question"], "") for r in vqa_test], [[r["answer"]] for r in vqa_test])
        out = work / "runs" / "shapes"
        last, secs = run_recipe(CONFIGS / "shapes-efficientnet.yaml", [
            f"data.0.train={data / 'captions_train.jsonl'}", f"data.0.eval={data / 'captions_test.jsonl'}",
            f"data.1.train={data / 'vqa_train.jsonl'}", f"data.1.eval={data / 'vqa_test.jsonl'}",
            f"output_dir={out}", f"stages.0.steps={args.steps}", f"feature_cache={work.parent / 'feature_cache'}",
        ])
        # ``last``: the recipe's final evaluation on both test splits; its time is inside ``secs``
        size = f"{len(cap_train)} imgs + {len(vqa_train)} QA, {args.steps} steps (bs 16)"
        method = "EfficientNet-Lite0 (frozen, 128px) + MLP + SmolLM2 LoRA r=8, caption+VQA mixture"
        task = "shapes captions test (60, held-out colour-shape pairs)"
        res.add(task, method, size, secs, "CIDEr-D", last.get("captioning/cider_d", float("nan")),
                f"NN retrieval: CIDEr-D {r_cider:.3f}", bleu4=last.get("captioning/bleu4"),
                eval_included_in_train_s=True)
        res.add(task, method, size, secs, "BLEU-4", last.get("captioning/bleu4", float("nan")),
                f"NN retrieval: BLEU-4 {r_bleu:.3f}")
        res.add(task, "nearest-neighbour caption retrieval (same frozen features)", len(cap_train), None,
                "CIDEr-D", r_cider, "", bleu4=round(r_bleu, 4))
        res.add("shapes VQA test (240 Q)", method, size, secs, "VQA acc", last.get("vqa/vqa_accuracy", float("nan")),
                f"per-question majority: {maj:.3f}")
        res.add("shapes VQA test (240 Q)", "per-question majority answer", len(vqa_train), None, "VQA acc", maj)
    if "coco" in parts:
        coco = require(Path(args.data) / "coco-mini", "coco-mini")
        link_data(work, "coco", coco / "images")
        rows = [{"image": "coco/" + Path(r["image"]).name, "captions": r["captions"]}
                for r in read_rows(coco / "captions.jsonl")]
        train, test = rows[:64], rows[64:]
        write_jsonl(work / "coco_train.jsonl", train)
        write_jsonl(work / "coco_test.jsonl", test)
        ret = retrieval_captions(train, test, work, None)
        refs = [r["captions"] for r in test]
        r_bleu, r_cider = bleu4(ret, refs), cider_d(ret, refs)
        out = work / "runs" / "coco"
        last, secs = run_recipe(CONFIGS / "coco-mini-caption.yaml", [
            f"data.0.train={work / 'coco_train.jsonl'}", f"data.0.eval={work / 'coco_test.jsonl'}",
            f"output_dir={out}", f"stages.0.steps={args.coco_steps}", f"feature_cache={work.parent / 'feature_cache'}",
        ])
        task = "coco-mini captions (16 test photos x 5 refs)"
        method = "EfficientNet-Lite0 (frozen, 224px) + MLP + SmolLM2 LoRA r=8"
        size = f"64 imgs x 5 caps, {args.coco_steps} steps (bs 16)"
        res.add(task, method, size, secs, "CIDEr-D", last.get("captioning/cider_d", float("nan")),
                f"NN retrieval: CIDEr-D {r_cider:.3f}", bleu4=last.get("captioning/bleu4"))
        res.add(task, method, size, secs, "BLEU-4", last.get("captioning/bleu4", float("nan")),
                f"NN retrieval: BLEU-4 {r_bleu:.3f}")
        res.add(task, "nearest-neighbour caption retrieval", 64, None, "CIDEr-D", r_cider, "", bleu4=round(r_bleu, 4))
    res.finish()


if __name__ == "__main__":
    main()
