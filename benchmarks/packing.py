"""Sequence packing on a joint mixture: padded vs length-bucketed vs packed training batches, side by side.

One pool of conversations mixes the joint mixture's three sources in every batch: synthetic shapes captions
(image), FSDD spoken digits (audio, ``<data>/fsdd/recordings``) and SST-2 sentences with their label (text,
``<data>/sst2/train.tsv``), so that lengths differ a lot within a batch (a 4-token image prefix + a caption,
a clip of 0.2-2 s as up to ~100 audio prefix tokens, a sentence of up to ~250 tokens). A source whose data is
absent is left out (and named in the JSON's ``sources``).

The same model (tiny tokenizer, a small GPT-2 decoder trained in full, frozen ResNet-10t / fbank encoders,
trained projectors) trains ``--steps`` steps in each mode, on the same samples in the same order for padded
and packed (bucketed reorders them into batches of similar length); the modes take turns step by step, so
that a change in the machine's load hits all three alike:

* padded: random batches, left-padded to the longest spliced sample of the batch;
* bucketed: ``bucket: true`` (length-bucketed batches, ``mmtransfer.data.sampler``);
* packed: ``packing: true`` with ``--pack-tokens`` positions per row (``mmtransfer.packing``).

Batches are collated before timing (decoding and preprocessing are the same in every mode): samples/s and
real tokens/s are those of the training step (forward, backward, AdamW). Padding share: positions the decoder
computes that hold no sample token. ``--threads 1`` when other jobs share the CPUs: two torch threads on
an oversubscribed machine wait on each other and the timings scatter by 3x from step to step.

The same run then measures reading (``benchmarks/data_sources.py --parts throughput``: the coco-mini photos
as a JSONL manifest, WebDataset shards, Parquet files and a ``save_to_disk`` directory; ``--no-sources`` skips it).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/packing.py --steps 30   # ~4 min on 2 cores
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, base_parser, link_data, load_avg, setup, write_jsonl

MODEL = {
    "decoder": {"model": "tiny-gpt2", "pretrained": False, "tokenizer": "mmtransfer/tiny-tokenizer",
                "config": {"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 1024,
                           "vocab_size": 434, "bos_token_id": 0, "eos_token_id": 0,
                           "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}},  # no dropout: same losses
    "image_encoder": {"name": "timm", "model_name": "resnet10t", "pretrained": False,
                      "data_config": {"input_size": [3, 64, 64], "crop_pct": 1.0}},
    "image_projector": {"name": "mlp"},
    "audio_encoder": {"name": "fbank", "n_mels": 40, "dim": 64, "layers": 2, "heads": 2},
    "audio_projector": {"name": "frame_stack", "k": 2},
    "trainable": {"image_encoder": "frozen", "audio_encoder": "frozen", "projectors": "full", "decoder": "full"},
}


def user(*content: Any) -> dict[str, Any]:
    return {"role": "user", "content": [c if isinstance(c, dict) else {"type": "text", "text": c} for c in content]}


def prepare(work: Path, data: Path, per_source: int) -> tuple[Path, list[str]]:
    """A conversation manifest mixing the sources found, shuffled; (its path, the sources' names)."""
    import asr_fsdd
    import sst2

    from mmtransfer.synthetic import write_shapes

    rows: list[dict[str, Any]] = []
    sources = []
    shapes = work / "shapes"
    if not (shapes / "captions_train.jsonl").exists():
        write_shapes(shapes, n_train=per_source, n_test=1)
    for line in (shapes / "captions_train.jsonl").read_text().splitlines()[:per_source]:
        r = json.loads(line)
        rows.append({"messages": [user({"type": "image", "image": f"shapes/{r['image']}"}, "describe the picture"),
                                  {"role": "assistant", "content": r["text"]}]})
    sources.append(f"shapes captions (synthetic, {per_source})")
    recordings = data / "fsdd" / "recordings"
    if recordings.exists():
        link_data(work, "fsdd", recordings)
        clips = asr_fsdd.fsdd_split(recordings)["train"]
        for name, _, word in random.Random(0).sample(clips, min(per_source, len(clips))):
            rows.append({"messages": [user({"type": "audio", "audio": f"fsdd/{name}"}, "which digit is spoken?"),
                                      {"role": "assistant", "content": word}]})
        sources.append(f"FSDD digits ({min(per_source, len(clips))})")
    else:
        print(f"FSDD not found at {recordings}: audio left out")
    tsv = data / "sst2" / "train.tsv"
    if tsv.exists():
        for text, label in sst2.subset(sst2.read_tsv(tsv), per_source):
            rows.append({"messages": [user(f"{text}. positive or negative?"), {"role": "assistant", "content": label}]})
        sources.append(f"SST-2 sentences ({per_source})")
    else:
        print(f"SST-2 not found at {tsv}: text-only samples left out")
    random.Random(0).shuffle(rows)
    return write_jsonl(work / "mixture.jsonl", rows), sources


def collate_batches(model: Any, manifest: Path, n: int, batch_size: int, bucket: bool,
                    pack_tokens: int | None) -> tuple[list[dict[str, Any]], float]:
    """The first ``n`` training batches of a loader over the manifest; (batches, seconds spent)."""
    from mmtransfer.data import Collator, TaskDataset, make_loader
    from mmtransfer.data.conversations import read_conversations
    from mmtransfer.tasks import get_task

    task = get_task("chat")
    samples = list(read_conversations(manifest, "messages"))
    dataset = TaskDataset(samples, task, sample_rate=model.encoders["audio"].sample_rate)
    loader = make_loader(dataset, Collator(model, task, pack_tokens=pack_tokens), batch_size, shuffle=True,
                         seed=0, bucket=bucket)
    out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    epoch = 0
    while len(out) < n:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            if "input_ids" in batch:
                out.append(batch)
            if len(out) == n:
                break
        epoch += 1
    return out, time.perf_counter() - t0


class Mode:
    """One way of batching: its own model (same seed, same initial weights), batches and counters."""

    def __init__(self, name: str, manifest: Path, n: int, batch_size: int, pack_tokens: int) -> None:
        import torch

        import mmtransfer

        torch.manual_seed(0)
        self.name = name
        self.model = mmtransfer.build_model(MODEL).train()
        self.batches, self.collate_s = collate_batches(self.model, manifest, n, batch_size, bucket=name == "bucketed",
                                                       pack_tokens=pack_tokens if name == "packed" else None)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.counts = {"positions": 0, "real": 0}
        self.samples = self.targets = 0
        self.seconds = 0.0
        self.losses: list[float] = []
        embed = self.model.embed

        def counting_embed(*args: Any, **kwargs: Any) -> Any:  # real (spliced) tokens of each batch
            out = embed(*args, **kwargs)
            self.counts["real"] += int(out[1].sum())
            return out

        def count_positions(_: Any, args: Any, kwargs: dict[str, Any]) -> None:  # what the decoder computes
            shape = kwargs["inputs_embeds"].shape
            self.counts["positions"] += shape[0] * shape[1]

        self.model.embed = counting_embed
        self.model.decoder.register_forward_pre_hook(count_positions, with_kwargs=True)

    def step(self, i: int, timed: bool) -> None:
        """Train on batch ``i``: forward, backward, AdamW; counted when ``timed``."""
        from mmtransfer.data import MODEL_INPUTS
        from mmtransfer.model.splice import IGNORE_INDEX

        batch = self.batches[i]
        before = dict(self.counts)
        t0 = time.perf_counter()
        loss = self.model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if not timed:
            self.counts = before
            return
        self.seconds += time.perf_counter() - t0
        self.samples += len(batch["input_ids"])
        self.targets += int((batch["labels"] != IGNORE_INDEX).sum())
        self.losses.append(loss.item())

    def result(self) -> dict[str, Any]:
        return {"mode": self.name, "steps": len(self.losses), "samples": self.samples,
                "seconds": round(self.seconds, 2), "samples_per_s": self.samples / self.seconds,
                "real_tokens_per_s": self.counts["real"] / self.seconds,
                "padding_share": 1 - self.counts["real"] / self.counts["positions"], "target_tokens": self.targets,
                "mean_loss": sum(self.losses) / len(self.losses), "collate_s": round(self.collate_s, 1)}


def read_sources(work: Path, data: str) -> dict[str, Any]:
    """The data-source reading part of this run: ``data_sources.py --parts throughput`` in a subprocess."""
    import subprocess

    out = work / "sources.json"
    subprocess.run([sys.executable, str(Path(__file__).with_name("data_sources.py")), "--parts", "throughput",
                    "--data", data, "--work", str(work / "sources"), "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, timeout=1800)
    return json.loads(out.read_text())


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "packing")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pack-tokens", type=int, default=256, help="packed: positions per row")
    p.add_argument("--per-source", type=int, default=200, help="samples of each source in the pool")
    p.add_argument("--no-sources", action="store_true", help="leave out the same run's data-source reading part "
                   "(benchmarks/data_sources.py --parts throughput: JSONL vs WebDataset vs HF, coco-mini)")
    p.set_defaults(out=str(ROOT / "outputs" / "bench" / "packing.json"))
    args = p.parse_args()
    setup(args)
    import torch

    manifest, sources = prepare(Path(args.work), Path(args.data), args.per_source)
    meta = {"benchmark": "packing", "command": " ".join(["python"] + sys.argv), "sources": sources,
            "batch_size": args.batch_size, "pack_tokens": args.pack_tokens, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_avg_start": load_avg(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    modes = [Mode(name, manifest, args.warmup + args.steps, args.batch_size, args.pack_tokens)
             for name in ("padded", "bucketed", "packed")]
    for i in range(args.warmup + args.steps):  # step i of every mode in turn: the machine's load hits all alike
        for mode in modes:
            mode.step(i, timed=i >= args.warmup)
    rows = [mode.result() for mode in modes]
    for row in rows:
        print(f"RESULT {json.dumps(row)}", flush=True)
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["vs_padded"] = row["samples_per_s"] / base
    reading = None if args.no_sources else read_sources(Path(args.work), args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {**meta, "load_avg_end": load_avg()}, "rows": rows,
                               "reading": reading}, indent=1))
    print(f"\npacking: {', '.join(sources)}; batch {args.batch_size}, {args.steps} steps per mode, "
          f"pack_tokens {args.pack_tokens}; load average {meta['load_avg_start']} -> {load_avg()}")
    print("| mode | samples/s | real tokens/s | padding share | vs padded (samples/s) | mean loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['samples_per_s']:.1f} | {r['real_tokens_per_s']:.0f} | {r['padding_share']:.0%} | "
              f"{r['vs_padded']:.2f}x | {r['mean_loss']:.3f} |")
    if reading is not None:
        print(f"\nreading {reading['throughput'][0]['data']}, images/s (no model):")
        print("| source | images/s | peak RSS (MB) |\n|---|---|---|")
        for r in reading["throughput"]:
            print(f"| {r['format']} | {r['samples_per_s']} | {r['peak_rss_mb']} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
