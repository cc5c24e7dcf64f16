"""Joint pretraining over image + audio + text, then fine-tuning on a new task, against fine-tuning alone.

1. ``mmtransfer/recipes/joint-real.yaml``: SmolLM2-135M-Instruct + LoRA, a frozen EfficientNet-Lite0 and a frozen
   Whisper tiny.en encoder (3 s), trained on a 1:1:1 mixture of shapes captioning, FSDD spoken digits and
   SST-2 (1,000 sentences, LM label scoring).
2. Fine-tune on shapes VQA (not in the mixture) for ``--ft-steps`` steps from the jointly pretrained model
   (``init_from``), and the same number of steps from the un-pretrained model (fresh projectors, fresh
   LoRA) at the same settings. Report VQA accuracy on the shapes test split (held-out colour-shape pairs).
   The peer of the joint row is the fine-tune-alone row of the same run.

Needs the manifests that ``asr_fsdd.py``, ``sst2.py`` and ``shapes.py`` write; this script writes them
itself through their helpers (cheap) when absent.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/joint.py --out outputs/bench/joint/results.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CONFIGS, ROOT, Results, base_parser, link_data, require, run_recipe, setup, write_jsonl


def prepare(data: Path, bench: Path) -> dict[str, Path]:
    """The manifests the mixture needs, under ``bench`` (the outputs/bench folder)."""
    import asr_fsdd
    import sst2

    from mmtransfer.synthetic import write_shapes

    shapes = bench / "shapes" / "data"
    if not (shapes / "vqa_test.jsonl").exists():
        write_shapes(shapes)
    recordings = require(data / "fsdd" / "recordings", "FSDD recordings")
    asr = bench / "asr_fsdd"
    asr.mkdir(parents=True, exist_ok=True)
    link_data(asr, "fsdd", recordings)
    for name, rows in asr_fsdd.fsdd_split(recordings).items():
        write_jsonl(asr / f"{name}.jsonl", ({"audio": f"fsdd/{f}", "text": w} for f, _, w in rows))
    src = require(data / "sst2", "SST-2")
    s = bench / "sst2"
    train = sst2.subset(sst2.read_tsv(src / "train.tsv"), 1000)
    write_jsonl(s / "train_1000.jsonl", ({"text": t, "label": y} for t, y in train))
    write_jsonl(s / "dev.jsonl", ({"text": t, "label": y} for t, y in sst2.read_tsv(src / "dev.tsv")))
    return {"captions_train": shapes / "captions_train.jsonl", "captions_test": shapes / "captions_test.jsonl",
            "vqa_train": shapes / "vqa_train.jsonl", "vqa_test": shapes / "vqa_test.jsonl",
            "asr_train": asr / "train.jsonl", "asr_test": asr / "test.jsonl",
            "sst2_train": s / "train_1000.jsonl", "sst2_dev": s / "dev.jsonl"}


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "joint")
    p.add_argument("--joint-steps", type=int, default=150)
    p.add_argument("--ft-steps", type=int, default=60)
    p.add_argument("--max-eval", type=int, default=0, help="score at most this many samples per eval set (0: all)")
    args = p.parse_args()
    setup(args)
    work = Path(args.work)
    m = prepare(Path(args.data), ROOT / "outputs" / "bench")
    cache = f"feature_cache={work.parent / 'feature_cache'}"
    res = Results("joint", args.out)
    joint_dir = work / "runs" / "joint"
    joint_metrics, joint_s = run_recipe(CONFIGS / "joint-real.yaml", [
        f"data.0.train={m['captions_train']}", f"data.0.eval={m['captions_test']}",
        f"data.1.train={m['asr_train']}", f"data.1.eval={m['asr_test']}",
        f"data.2.train={m['sst2_train']}", f"data.2.eval={m['sst2_dev']}",
        f"output_dir={joint_dir}", f"stages.0.steps={args.joint_steps}", cache,
        *([f"data.{i}.max_eval_samples={args.max_eval}" for i in range(3)] if args.max_eval else []),
    ])
    for key, value in joint_metrics.items():
        res.add("joint pretraining (eval after the mixture)", "SmolLM2 LoRA + 2 frozen encoders, 1:1:1 mixture",
                f"{args.joint_steps} steps (bs 16)", joint_s, key, value, "")
    limit = f", max_eval_samples: {args.max_eval}" if args.max_eval else ""
    vqa = f"data=[{{task: vqa, train: {m['vqa_train']}, eval: {m['vqa_test']}{limit}}}]"
    rows = {}
    for name, extra in (("alone", []), ("after_joint", [f"init_from={joint_dir / 'final'}"])):
        out = work / "runs" / f"vqa_{name}"
        metrics, secs = run_recipe(CONFIGS / "joint-real.yaml", [
            vqa, f"output_dir={out}", "stages.0.name=finetune", f"stages.0.steps={args.ft_steps}", cache, *extra,
        ])
        rows[name] = (metrics["vqa/vqa_accuracy"], secs)
    task = f"shapes VQA test ({args.max_eval or 240} Q, held-out pairs)"
    size = f"1600 QA, {args.ft_steps} fine-tune steps (bs 16)"
    alone, after = rows["alone"], rows["after_joint"]
    res.add(task, "fine-tune alone (projector + LoRA from the base model)", size, alone[1], "VQA acc", alone[0],
            "")
    res.add(task, f"joint pretraining ({args.joint_steps} steps) then the same fine-tune", size, after[1],
            "VQA acc", after[0], f"fine-tune alone: {alone[0]:.3f}", joint_train_s=round(joint_s, 1))
    res.finish()


if __name__ == "__main__":
    main()
