"""SST-2 sentiment with SmolLM2-135M-Instruct: prompting, a linear probe and LoRA, against TF-IDF + logistic regression.

Train on a random subset of ``train.tsv`` (seed 0) of each size in ``--sizes``; report accuracy on all of
``dev.tsv`` (872 sentences). Parts (``--parts``, comma-separated):

* ``baseline``: TF-IDF (word 1-2 grams) + logistic regression (scikit-learn) at each size and on all 67k;
  this is the peer of every other row, at the same training size.
* ``prompt``: zero-shot and few-shot label scoring with the pretrained LM (``model.classify(texts,
  shots=...)``; no training). Prompt ``Review: {text}\\nSentiment:`` and labels " negative" / " positive".
* ``probe``: ``mmtransfer/recipes/sst2-probe.yaml``: frozen decoder + linear head, pretrained vs the same
  architecture with random weights (``model.decoder.pretrained=false``).
* ``lora``: ``mmtransfer/recipes/sst2-lora.yaml``: short probe then LoRA r=8 + head, at ``--lora-sizes``.
* ``lora_lm``: ``mmtransfer/recipes/sst2-lora-lm.yaml``: LoRA r=8 trained to continue the prompt with the label
  word, predicted by label scoring as in ``prompt`` (no head), at ``--lora-sizes``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sst2.py --parts baseline,prompt,probe --sizes 100,1000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sst2.py --parts lora --lora-sizes 1000 \
        --out outputs/bench/sst2/lora.json
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CONFIGS, Results, base_parser, evaluate_saved, require, run_recipe, setup, timed, write_jsonl

LABELS = ("negative", "positive")
TEMPLATE = "Review: {text}\nSentiment:"


def read_tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if i == 0 or not line.strip():
            continue  # header
        label, text = line.split("\t", 1)
        rows.append((text.strip(), LABELS[int(label)]))
    return rows


def subset(rows: list[tuple[str, str]], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """The first ``n`` of one fixed shuffle, so smaller subsets are nested in larger ones."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]


def tfidf_lr(train: list[tuple[str, str]], dev: list[tuple[str, str]]) -> tuple[float, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    with timed() as t:
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        x = vec.fit_transform([s for s, _ in train])
        clf = LogisticRegression(C=4.0, max_iter=2000).fit(x, [y for _, y in train])
    pred = clf.predict(vec.transform([s for s, _ in dev]))
    return sum(p == y for p, (_, y) in zip(pred, dev)) / len(dev), t["s"]


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "sst2")
    p.add_argument("--parts", default="baseline,prompt,probe,lora,lora_lm")
    p.add_argument("--sizes", default="100,1000", help="training subset sizes (baseline, probe)")
    p.add_argument("--lora-sizes", default="1000")
    p.add_argument("--lora-epochs", type=float, default=2.0)
    p.add_argument("--probe-epochs", type=float, default=2.0)
    p.add_argument("--shots", type=int, default=4, help="few-shot examples (half of each label)")
    p.add_argument("--prompt-dev", type=int, default=0,
                   help="score prompting on a random subset of this many dev sentences (0: all 872)")
    p.add_argument("--scratch", default="probe", help="parts that also run with a random-init decoder")
    p.add_argument("--scratch-only", action="store_true", help="run those parts with the random-init decoder only")
    args = p.parse_args()
    setup(args)
    src = require(Path(args.data) / "sst2", "SST-2")
    work = Path(args.work)
    train_all, dev = read_tsv(src / "train.tsv"), read_tsv(src / "dev.tsv")
    parts = set(args.parts.split(","))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    lora_sizes = [int(s) for s in args.lora_sizes.split(",") if s]
    dev_path = write_jsonl(work / "dev.jsonl", ({"text": s, "label": y} for s, y in dev))
    for n in sorted(set(sizes + lora_sizes)):
        write_jsonl(work / f"train_{n}.jsonl", ({"text": s, "label": y} for s, y in subset(train_all, n)))
    res = Results("sst2", args.out)
    task = "SST-2 dev (872)"

    peers: dict[int, float] = {}
    for n in sorted(set(sizes + lora_sizes)):
        peers[n], _ = tfidf_lr(subset(train_all, n), dev)

    def peer(n: int) -> str:
        return f"TF-IDF+LR @ {n}: {peers[n]:.3f}"

    if "baseline" in parts:
        for n in sorted(set(sizes + lora_sizes)) + [len(train_all)]:
            acc, secs = tfidf_lr(subset(train_all, n), dev)
            res.add(task, "TF-IDF (1-2 gram) + logistic regression", n, secs, "accuracy", acc)

    if "prompt" in parts:
        import mmtransfer
        from mmtransfer.tasks import get_task

        model = mmtransfer.build_model({
            "decoder": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "labels": list(LABELS),
            "chat_template": "plain", "prompts": {"classify": TEMPLATE},
        }).eval()
        cls = get_task("classification")
        scored = subset(dev, args.prompt_dev, seed=2) if args.prompt_dev else dev
        samples = [{"text": s, "label": y} for s, y in scored]
        pool = [x for x in subset(train_all, 1000) if len(x[0].split()) <= 12]  # short shots: cheaper prompts
        shots = [x for x in pool if x[1] == "negative"][: args.shots // 2] + \
                [x for x in pool if x[1] == "positive"][: args.shots // 2]
        random.Random(1).shuffle(shots)
        for k, sh in ((0, []), (len(shots), shots)):
            with timed() as t:
                m = cls.evaluate(model, samples, 16, shots=sh)
            res.add(f"SST-2 dev ({len(samples)})", f"SmolLM2-135M-Instruct {k}-shot label scoring", k, 0.0, "accuracy",
                    m["accuracy"],
                    peer(100) if 100 in peers else "", eval_s=round(t["s"], 1))

    def trained(recipe: str, n: int, epochs: float, name: str, scratch: bool) -> None:
        steps = max(20, math.ceil(epochs * n / 16))
        out = work / "runs" / f"{name}_{n}{'_scratch' if scratch else ''}"
        stage = 1 if name == "lora" else 0  # the LoRA + head recipe's first stage is a short fixed probe
        overrides = [f"data.0.train={work / f'train_{n}.jsonl'}", "data.0.eval=null", f"output_dir={out}",
                     f"stages.{stage}.steps={steps}"]
        if scratch:
            overrides.append("model.decoder.pretrained=false")
        _, secs = run_recipe(CONFIGS / recipe, overrides)
        metrics, eval_s, _ = evaluate_saved(out / "final", "classification", dev_path, 32)
        label = {"probe": "frozen SmolLM2 + linear head", "lora": "LoRA r=8 + head (after 30-step probe)",
                 "lora_lm": "LoRA r=8, label words scored by the LM (no head)"}[name]
        res.add(task, f"{label}, {'random-init' if scratch else 'pretrained'} decoder", n, secs, "accuracy",
                metrics["accuracy"], peer(n), eval_s=round(eval_s, 1), steps=steps, batch=16)

    scratch_parts = set(args.scratch.split(","))

    def variants(name: str) -> tuple[bool, ...]:
        if name not in scratch_parts:
            return (False,)
        return (True,) if args.scratch_only else (False, True)

    if "probe" in parts:
        for n in sizes:
            for scratch in variants("probe"):
                trained("sst2-probe.yaml", n, args.probe_epochs, "probe", scratch)
    for name in ("lora", "lora_lm"):
        if name in parts:
            for n in lora_sizes:
                for scratch in variants(name):
                    trained(f"sst2-{name.replace('_', '-')}.yaml", n, args.lora_epochs, name, scratch)
    res.finish()


if __name__ == "__main__":
    main()
