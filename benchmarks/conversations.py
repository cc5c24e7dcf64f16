"""Conversations on real weights: a multi-image task and a multi-turn task on the synthetic shapes.

``mmtransfer/recipes/chat-shapes.yaml`` (frozen EfficientNet-Lite0, MLP projector, SmolLM2-135M-Instruct + LoRA,
SmolLM2's chat template) trained on each condition, scored by exact match on unseen scenes (the test split's
colour-shape pairs never occur in training):

* ``compare`` (two images in one turn): "which image has more shapes?" -> "the first" / "the second".
  Baselines in the same run: the same model and data with only the first image (it cannot see the
  second), and the majority answer.
* ``dialogue`` (media in a later turn): turn 1 asks one property (colour, shape, count or side) of image
  A and is answered; turn 2 gives image B and asks "and in this one?", answered with B's value of that
  property. Only the first turn says which property is meant. Baselines: the second turn alone (image B
  and "and in this one?", trained the same way) and the majority answer.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/conversations.py --out outputs/bench/conversations/results.json
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CONFIGS, Results, base_parser, run_recipe, setup, write_jsonl

QUESTIONS = {"colour": "what colour are the shapes?", "shape": "what shape are they?",
             "count": "how many shapes are there?", "side": "which side are the shapes on?"}


def answer(scene: dict, prop: str) -> str:
    from mmtransfer.synthetic import NUMBERS  # mmtransfer after setup(): it sets HF_HUB_OFFLINE

    return NUMBERS[scene["count"]] if prop == "count" else scene[prop]


def _chat(*turns: dict) -> dict:
    return {"messages": list(turns)}


def compare_rows(scenes: list[dict], n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(two-image conversations, the same with the first image only) for ``n`` pairs with different counts."""
    from mmtransfer.synthetic import assistant_message, user_message

    both, first = [], []
    while len(both) < n:
        a, b = rng.sample(scenes, 2)
        if a["count"] == b["count"]:
            continue
        reply = assistant_message("the first" if a["count"] > b["count"] else "the second")
        both.append(_chat(user_message(a["image"], b["image"], "which image has more shapes?"), reply))
        first.append(_chat(user_message(a["image"], "which image has more shapes?"), reply))
    return both, first


def dialogue_rows(scenes: list[dict], n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(two-turn conversations, their second turn alone) for ``n`` (scene A, scene B, property) draws."""
    from mmtransfer.synthetic import assistant_message, user_message

    full, alone = [], []
    for _ in range(n):
        a, b = rng.sample(scenes, 2)
        prop = rng.choice(list(QUESTIONS))
        second = [user_message(b["image"], "and in this one?"), assistant_message(answer(b, prop))]
        full.append(_chat(user_message(a["image"], QUESTIONS[prop]), assistant_message(answer(a, prop)), *second))
        alone.append(_chat(*second))
    return full, alone


def majority(train: list[dict], test: list[dict]) -> tuple[str, float]:
    """The most common last answer in ``train`` and its exact-match accuracy on ``test``."""
    last = [r["messages"][-1]["content"] for r in train]
    top = Counter(last).most_common(1)[0][0]
    return top, sum(r["messages"][-1]["content"] == top for r in test) / len(test)


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "conversations")
    p.add_argument("--parts", default="compare,dialogue")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--n-test", type=int, default=120)
    args = p.parse_args()
    setup(args)
    from mmtransfer.synthetic import scene_of, write_shapes

    work = Path(args.work)
    data = work / "data"
    write_shapes(data / "shapes")
    scenes = {s: [scene_of(json.loads(line)) for line in (data / f"shapes/captions_{s}.jsonl").open()]
              for s in ("train", "test")}
    rng = random.Random(0)
    makers = {"compare": (compare_rows, "two images, one turn", "first image only"),
              "dialogue": (dialogue_rows, "two turns, image B in turn 2", "turn 2 alone")}
    res = Results("conversations", args.out)
    for part in args.parts.split(","):
        make, full_name, base_name = makers[part]
        (train, train_base), (test, test_base) = (make(scenes[s], n, rng) for s, n in
                                                  (("train", args.n_train), ("test", args.n_test)))
        top, maj = majority(train, test)
        task = f"shapes {part} test ({args.n_test} conversations, unseen scenes)"
        size = f"{args.n_train} conversations, {args.steps} steps (bs 16)"
        for name, tr, te in ((full_name, train, test), (base_name, train_base, test_base)):
            slug = f"{part}_{'base' if name == base_name else 'full'}"
            write_jsonl(data / f"{slug}_train.jsonl", tr)
            write_jsonl(data / f"{slug}_test.jsonl", te)
            last, secs = run_recipe(CONFIGS / "chat-shapes.yaml", [
                f"data.0.train={data / f'{slug}_train.jsonl'}", f"data.0.eval={data / f'{slug}_test.jsonl'}",
                f"output_dir={work / 'runs' / slug}", f"stages.0.steps={args.steps}",
                f"feature_cache={work.parent / 'feature_cache'}",
            ])
            res.add(task, f"EfficientNet-Lite0 + MLP + SmolLM2-Instruct LoRA r=8: {name}", size, secs,
                    "exact match", last.get("chat/exact_match", float("nan")),
                    f"majority '{top}': {maj:.3f}", bleu4=last.get("chat/bleu4"), eval_included_in_train_s=True)
        res.add(task, f"majority answer ('{top}')", args.n_train, None, "exact match", maj)
    res.finish()


if __name__ == "__main__":
    main()
