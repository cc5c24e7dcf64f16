"""Zero-shot label scoring speed: the prompt once with a shared KV cache (``classify``) against one full forward
per (prompt, label) pair with the LM head on every position (how ``classify`` scored before).

SmolLM2-135M-Instruct, SST-2 dev sentences (the synthetic sentiment set when SST-2 is absent), the SST-2 prompt of
``benchmarks/sst2.py``; both methods in one run, alternating whole passes. Reports
sentences/s of each (mean over ``--repeats`` alternating passes), the ratio, and whether every prediction agrees.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/label_scoring.py --n 400 --out outputs/bench/label_scoring.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Results, base_parser, setup
from sst2 import LABELS, TEMPLATE, read_tsv


def sentences(data: Path, work: Path, n: int) -> tuple[list[str], str]:
    """Up to ``n`` SST-2 dev sentences, or synthetic sentiment sentences when SST-2 is not there."""
    dev = data / "sst2" / "dev.tsv"
    if dev.exists():
        rows = read_tsv(dev)[:n]
        return [text for text, _ in rows], f"SST-2 dev ({len(rows)})"
    from mmtransfer.synthetic import write_sentiment

    write_sentiment(work / "sentiment", n_train=1, n_test=n)
    rows = [json.loads(line) for line in (work / "sentiment" / "sentiment_test.jsonl").open()]
    return [r["text"] for r in rows], f"synthetic sentiment ({n})"


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "label_scoring")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    setup(args)
    import torch

    import mmtransfer

    model = mmtransfer.build_model({"decoder": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "labels": list(LABELS),
                                    "chat_template": "plain", "prompts": {"classify": TEMPLATE}}).eval()
    texts, where = sentences(Path(args.data), Path(args.work), args.n)
    prompts = [TEMPLATE.format(text=t) for t in texts]
    targets = [f" {y}" for y in LABELS]

    def pairs() -> list[str]:  # the previous classify: every (prompt, label) pair in full, in input order
        out = []
        for i in range(0, len(prompts), args.batch_size):
            chunk = prompts[i : i + args.batch_size]
            batch = model.processor.tokenize([q for q in chunk for _ in targets], targets * len(chunk), add_eos=False)
            out += [LABELS[j] for j in model.sequence_logprobs(batch).view(len(chunk), -1).argmax(-1).tolist()]
        return out

    methods = {"shared": lambda: model.classify(texts, batch_size=args.batch_size), "pairs": pairs}
    times: dict[str, list[float]] = {"shared": [], "pairs": []}
    preds: dict[str, list[str]] = {}
    with torch.inference_mode():
        for _ in range(args.repeats):  # alternate, so load changes hit both alike
            for name, run in methods.items():
                t0 = time.perf_counter()
                preds[name] = run()
                times[name].append(time.perf_counter() - t0)
    res = Results("label_scoring", args.out)
    differ = sum(a != b for a, b in zip(preds["shared"], preds["pairs"]))
    rate = {k: len(prompts) / (sum(v) / len(v)) for k, v in times.items()}
    task = f"{where}, SmolLM2-135M-Instruct zero-shot, 2 labels, batch {args.batch_size}"
    method = "classify: prompts sorted by length, each run once (shared KV cache), LM head on label tokens"
    res.add(task, method, 0, None, "sentences/s", rate["shared"], f"one forward per pair: {rate['pairs']:.2f}/s",
            ratio=round(rate["shared"] / rate["pairs"], 2), predictions_that_differ=differ)
    res.add(task, "one full forward per (prompt, label) pair, LM head on every position (before)", 0, None,
            "sentences/s", rate["pairs"])
    res.finish()


if __name__ == "__main__":
    main()
