"""DAQUAR visual question answering on real indoor photos, with a blind model and a question-type prior in the same run.

DAQUAR's training questions are split by image (``--dev-images`` of the 794 photos, chosen with a fixed seed, hold
every question asked about them), so no dev photo is seen in training. Parts (``--parts``):

* ``prior``: per-question-type prior: the most common training answer for the question's first three words (then
  two, then one; then the most common answer overall).
* ``ours``: ``mmtransfer/recipes/daquar-vqa.yaml`` (frozen EfficientNet-Lite0, 49 tokens, MLP projector,
  SmolLM2-135M-Instruct + LoRA r=16); its eval also reports the media gain (the dev questions with black images).
* ``blind``: the same recipe, steps and seed with every image (train and dev) replaced by one black image.
* ``turns`` / ``turns_blind``: the same recipe trained on each photo's questions as multi-turn conversations
  (LLaVA's layout: the photo once, then up to ``--turns`` question/answer pairs), mixed with single questions
  (a ``--single-share`` of the steps). An answer is one or two tokens, so a single-question step spends almost all
  its compute on the 49 image tokens and the prompt; a conversation pays for the photo once per ``--turns``
  answers. Scored on the same single dev questions; ``turns_blind`` is the same with every image black.
* ``captions``: transfer from captioning. The same model first learns to caption Flickr8k's training photos
  (``--caption-steps``: captions name what is in a photo, so the projector must carry it; on Flickr8k blanking the
  image costs 0.24-0.33 nats per caption token), then trains on DAQUAR exactly as ``ours`` (``init_from``: the
  caption model, its projector and LoRA). Needs ``flickr8k/`` beside ``daquar/``.

* ``tenth`` / ``scratch`` / ``scratch_tenth``: data efficiency. ``tenth`` is ``ours`` trained on a tenth of the
  training photos (every question on them; the same steps, so more epochs); ``scratch`` is ``ours`` with a randomly
  initialised decoder of the same size (SmolLM2-135M's config, no weights), trained in full at ``--scratch-lr``
  instead of LoRA; ``scratch_tenth`` is both. What the pretrained decoder is worth, at all of the data and a tenth.

``--full-frame`` runs every trained row on the whole photo: DAQUAR's photos are 320x240, and the recipe's 224 px center
crop (timm's eval transform: shorter side to 256, then the central 224x224) keeps 57% of each photo, two thirds of
its width, where many questions ask what is on the left or right. Full frame: 240x320 input (EfficientNet's 8x10
grid), pooled bilinearly to 4x5 (20 tokens) before the MLP.

Scored by exact match after VQA answer normalisation (``mmtransfer.metrics.vqa_accuracy``, one reference each).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/daquar.py --out outputs/bench/daquar/results.json
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CONFIGS, Results, base_parser, link_data, require, run_recipe, setup, write_jsonl

FULL_FRAME = [
    "model.image_encoder={name: timm, model_name: efficientnet_lite0, pretrained: true, "
    "data_config: {input_size: [3, 240, 320], crop_pct: 1.0}}",
    "model.image_projector={name: pool, size: [4, 5], mode: bilinear, grid: [8, 10]}",
]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split_by_image(rows: list[dict], n_dev: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, dev): the questions on ``n_dev`` seeded-random images form dev, the rest train."""
    images = sorted({r["image"] for r in rows})
    dev_images = set(random.Random(seed).sample(images, n_dev))
    return [r for r in rows if r["image"] not in dev_images], [r for r in rows if r["image"] in dev_images]


def prior_answers(train: list[dict], dev: list[dict]) -> list[str]:
    """The most common training answer of each dev question's longest known prefix of up to three words."""
    table: dict[tuple[str, ...], Counter] = {}
    for r in train:
        words = tuple(r["question"].lower().split())
        for n in (0, 1, 2, 3):
            table.setdefault(words[:n], Counter())[r["answer"]] += 1
    out = []
    for r in dev:
        words = tuple(r["question"].lower().split())
        key = next(words[:n] for n in (3, 2, 1, 0) if words[:n] in table)
        out.append(table[key].most_common(1)[0][0])
    return out


def conversations(rows: list[dict], turns: int, seed: int = 0) -> list[dict]:
    """Each photo's questions (seeded order) as conversations of up to ``turns`` question/answer pairs, the photo
    before the first question: the single-question prompt, repeated."""
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    out = []
    rng = random.Random(seed)
    for image, qs in sorted(by_image.items()):
        rng.shuffle(qs)
        for start in range(0, len(qs), turns):
            messages = []
            for k, r in enumerate(qs[start:start + turns]):
                text = {"type": "text", "text": f"Question: {r['question']}\nAnswer:"}
                content = [{"type": "image", "image": image}, text] if k == 0 else [text]
                messages += [{"role": "user", "content": content}, {"role": "assistant", "content": " " + r["answer"]}]
            out.append({"messages": messages})
    return out


def flickr_data(data: Path, work: Path, n_eval: int = 50) -> list[str]:
    """The ``data=`` override of the captions row's first run: Flickr8k's training captions, its first ``n_eval``
    dev photos to watch the captioning loss (never DAQUAR's dev split)."""
    src = require(data / "flickr8k", "flickr8k")
    link_data(work, "flickr_images", src / "images")
    for name in ("train", "dev"):
        rows = [{**r, "image": "flickr_images/" + Path(r["image"]).name} for r in read_rows(src / f"{name}.jsonl")]
        write_jsonl(work / f"flickr_{name}.jsonl", rows[:n_eval] if name == "dev" else rows)
    return [f"data=[{{task: captioning, train: {work / 'flickr_train.jsonl'}, eval: {work / 'flickr_dev.jsonl'}}}]"]


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "daquar")
    p.add_argument("--parts", default="prior,ours,blind")
    p.add_argument("--steps", type=int, default=250, help="training steps of 16 questions (ours and blind)")
    p.add_argument("--dev-images", type=int, default=80, help="training images held out as the dev split")
    p.add_argument("--turn-steps", type=int, default=200, help="turns rows: training steps of 8 conversations")
    p.add_argument("--turns", type=int, default=8, help="turns rows: question/answer pairs per conversation")
    p.add_argument("--single-share", type=float, default=0.2, help="turns rows: the share of single-question steps")
    p.add_argument("--caption-steps", type=int, default=150, help="captions row: Flickr8k steps of 16 captions first")
    p.add_argument("--scratch-lr", type=float, default=5e-4, help="scratch rows: the random decoder's learning rate")
    p.add_argument("--full-frame", action="store_true", help="trained rows see the whole 320x240 photo (20 tokens)")
    args = p.parse_args()
    setup(args)
    from PIL import Image

    from mmtransfer.metrics import vqa_accuracy

    src = require(Path(args.data) / "daquar", "daquar")
    work = Path(args.work)
    link_data(work, "images", src / "images")
    train, dev = split_by_image(read_rows(src / "train.jsonl"), args.dev_images)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "dev.jsonl", dev)
    tenth, _ = split_by_image(train, len({r["image"] for r in train}) * 9 // 10, seed=1)
    write_jsonl(work / "train_tenth.jsonl", tenth)
    Image.new("RGB", (320, 240)).save(work / "black.png")
    for name, rows in (("train", train), ("dev", dev)):
        write_jsonl(work / f"{name}_blind.jsonl", [{**r, "image": "black.png"} for r in rows])
    convs = conversations(train, args.turns)
    write_jsonl(work / "turns.jsonl", convs)
    write_jsonl(work / "turns_blind.jsonl", conversations([{**r, "image": "black.png"} for r in train], args.turns))
    refs = [[r["answer"]] for r in dev]
    task = f"DAQUAR dev ({len(dev)} questions on {args.dev_images} unseen photos)"
    size = f"{len(train)} Q/A on {len({r['image'] for r in train})} photos, {args.steps} steps (bs 16)"
    parts = args.parts.split(",")
    res = Results("daquar", args.out)
    if "prior" in parts:
        res.add(task, "per-question-type prior (first words -> most common answer)", len(train), None, "accuracy",
                vqa_accuracy(prior_answers(train, dev), refs))
    view = FULL_FRAME if args.full_frame else []
    encoder = ("EfficientNet-Lite0 (frozen, whole photo 320x240, 8x10 grid pooled to 4x5 = 20 tokens)"
               if args.full_frame else "EfficientNet-Lite0 (frozen, 224 px center crop, 49 tokens)")
    scratch = ["model.decoder={model: HuggingFaceTB/SmolLM2-135M-Instruct, pretrained: false}",
               "model.trainable={image_encoder: frozen, projectors: full, decoder: full}",
               f"optim.lr={args.scratch_lr}"]
    tenth_size = f"{len(tenth)} Q/A on {len({r['image'] for r in tenth})} photos (a tenth), {args.steps} steps (bs 16)"
    ours = f"{encoder} + MLP + SmolLM2 LoRA r=16"
    for part, suffix, method in (("ours", "", ours),
                                 ("blind", "_blind", "blind: the same recipe with every image black"),
                                 ("tenth", "_tenth", f"{ours}, a tenth of the photos"),
                                 ("scratch", "", f"{encoder} + MLP + a randomly initialised SmolLM2-135M-size decoder "
                                  "(trained in full)"),
                                 ("scratch_tenth", "_tenth", "same random decoder, a tenth of the photos"),
                                 ("captions", "", f"{ours}, after {args.caption_steps} Flickr8k captioning steps")):
        if part not in parts:
            continue
        extra, pre_secs = (scratch if part.startswith("scratch") else []), 0.0
        if part == "captions":
            pre = work / "runs" / "captions_pretrain"
            _, pre_secs = run_recipe(CONFIGS / "daquar-vqa.yaml", [
                *flickr_data(Path(args.data), work), 'model.prompts.caption="<image>Caption:"', "max_new_tokens=20",
                f"output_dir={pre}", f"stages.0.steps={args.caption_steps}",
                f"feature_cache={work.parent / 'feature_cache'}", *view,
            ])
            extra = [f"init_from={pre / 'final'}"]
        last, secs = run_recipe(CONFIGS / "daquar-vqa.yaml", [
            f"data.0.train={work / f'train{suffix}.jsonl'}",
            f"data.0.eval={work / ('dev_blind.jsonl' if suffix == '_blind' else 'dev.jsonl')}",
            f"output_dir={work / 'runs' / part}", f"stages.0.steps={args.steps}",
            f"feature_cache={work.parent / 'feature_cache'}", *view, *extra,
        ])
        res.add(task, method, tenth_size if suffix == "_tenth" else size, secs + pre_secs, "accuracy",
                last.get("vqa/vqa_accuracy", float("nan")),
                "see prior / blind rows", metrics=last, eval_included_in_train_s=True,
                **({"pretrain_s": round(pre_secs, 1)} if part == "captions" else {}))
    size = (f"{len(convs)} conversations of up to {args.turns} Q/A ({len(train)} Q/A), {args.turn_steps} steps (bs 8, "
            f"{args.single_share:.0%} single questions)")
    for part, suffix, method in (("turns", "", "same, trained on multi-turn conversations (one per photo)"),
                                 ("turns_blind", "_blind", "blind: the multi-turn recipe with every image black")):
        if part not in parts:
            continue
        last, secs = run_recipe(CONFIGS / "daquar-vqa.yaml", [
            f"data=[{{task: chat, name: turns, train: {work / f'turns{suffix}.jsonl'}}}, "
            f"{{task: vqa, train: {work / f'train{suffix}.jsonl'}, eval: {work / f'dev{suffix}.jsonl'}, "
            f"weight: {args.single_share / (1 - args.single_share):.4f}}}]",
            f"output_dir={work / 'runs' / part}", f"stages.0.steps={args.turn_steps}", "batch_size=8",
            f"feature_cache={work.parent / 'feature_cache'}", *view,
        ])
        res.add(task, method, size, secs, "accuracy", last.get("vqa/vqa_accuracy", float("nan")),
                "see prior / blind rows", metrics=last, eval_included_in_train_s=True)
    res.finish()


if __name__ == "__main__":
    main()
