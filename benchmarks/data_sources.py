"""Reading throughput and peak memory of the data sources: JSONL manifest vs WebDataset shards vs Hugging Face
datasets (Parquet files with image bytes; a ``save_to_disk`` directory).

Two parts, every measurement in its own subprocess (peak RSS = that process's ``VmHWM``):

* ``throughput``: the coco-mini photos (``<data>/coco-mini``, 80 photos; skipped when absent, or ``--synthetic``
  for the shapes scenes) written in each format, then one pass over each ``--repeat`` times: samples read,
  parsed and their images decoded to RGB (what ``TaskDataset`` hands the collator), no model. ``num_workers=0``;
  images/s counts the reading only (``open_s``, opening the source, apart).
* ``memory``: a generated captioning set of ``--base`` samples and one 10x as large (distinct keys over 200 random
  160 px JPEGs), one epoch over each: a streaming source's peak RSS stays flat, a JSONL manifest holds every
  sample in memory.

    timeout 1800 python benchmarks/data_sources.py            # about 5 minutes on 2 CPU cores
    python benchmarks/data_sources.py --synthetic --base 500  # no shared data, quicker

Prints a table and writes ``outputs/bench/data_sources.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORMATS = ("jsonl", "webdataset", "hf-parquet", "hf-dir")


# -- the child: one pass over one source ------------------------------------------------------------------
def _count(items: list[Any]) -> dict[str, Any]:
    from mmtransfer.data.records import Skip

    return {"n": sum(not isinstance(x, Skip) for x in items), "skipped": sum(isinstance(x, Skip) for x in items)}


def child(fmt: str, spec: str, repeat: int, batch: int = 16) -> dict[str, Any]:
    from mmtransfer.data import TaskDataset, make_loader, read_manifest
    from mmtransfer.data.samples import ToSample
    from mmtransfer.data.streaming import StreamingDataset, make_stream_loader, open_source
    from mmtransfer.tasks import get_task

    task = get_task("captioning")
    t0 = time.perf_counter()
    if fmt == "jsonl":
        loader = make_loader(TaskDataset(list(read_manifest(spec, task)), task), _count, batch, shuffle=True)
    else:
        source = open_source("webdataset" if fmt == "webdataset" else "hf", spec, task)
        stream = StreamingDataset(source, ToSample(task), TaskDataset([], task), _count, batch, expand_targets=False,
                                  shuffle_buffer=100)
        loader = make_stream_loader(stream)
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = skipped = 0
    for e in range(repeat):
        if fmt == "jsonl":
            loader.batch_sampler.set_epoch(e)
        else:
            stream.set_position(e)
        for b in loader:
            n, skipped = n + b["n"], skipped + b["skipped"]
    seconds = time.perf_counter() - t0
    return {"format": fmt, "samples": n, "skipped": skipped, "open_s": round(opened, 2), "read_s": round(seconds, 2),
            "samples_per_s": round(n / seconds, 1), "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ``ru_maxrss``, not inherited from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_child(fmt: str, spec: str | Path, repeat: int) -> dict[str, Any]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", fmt, str(spec), "--repeat", str(repeat)],
                          env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise RuntimeError(f"{fmt} {spec}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the data -------------------------------------------------------------------------------------------
def write_formats(manifest: Path, out: Path, per_shard: int) -> dict[str, Path]:
    """The manifest as WebDataset shards, Parquet files (image bytes) and a save_to_disk directory."""
    import datasets

    from mmtransfer.data.convert import write_parquet, write_shards

    for name in ("wds", "parquet", "hfdir", "hf-cache"):
        shutil.rmtree(out / name, ignore_errors=True)
    write_shards(manifest, "captioning", out / "wds", per_shard=per_shard)
    files = write_parquet(manifest, "captioning", out / "parquet", per_file=per_shard)
    data = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                 cache_dir=str(out / "hf-cache"))
    data.save_to_disk(str(out / "hfdir"))
    shutil.rmtree(out / "hf-cache", ignore_errors=True)
    return {"jsonl": manifest, "webdataset": out / "wds", "hf-parquet": out / "parquet", "hf-dir": out / "hfdir"}


def generated(out: Path, n: int, pool: int = 200, seed: int = 0) -> Path:
    """A captioning manifest of ``n`` lines over ``pool`` random 160 px JPEGs (written once)."""
    import numpy as np
    from PIL import Image

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(pool):
        path = images / f"{i:04d}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(path, quality=85)
    words = ["red", "blue", "green", "circle", "square", "left", "right", "two", "three", "small"]
    r = random.Random(seed)
    manifest = out / f"captions_{n}.jsonl"
    with manifest.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"image": f"images/{i % pool:04d}.jpg", "text": " ".join(r.choices(words, k=6))}) + "\n")
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs=2, metavar=("FORMAT", "SPEC"), help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=5, help="passes over coco-mini in the throughput part")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="holds coco-mini/")
    p.add_argument("--synthetic", action="store_true", help="throughput on the shapes scenes, not coco-mini")
    p.add_argument("--base", type=int, default=2000, help="memory part: samples of the smaller set (x10 the other)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "bench" / "data_sources"))
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "data_sources.json"))
    p.add_argument("--parts", default="throughput,memory", help="which parts to run (benchmarks/packing.py runs "
                   "the throughput part in its own run)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.repeat)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
                              "load_avg_start": list(os.getloadavg()), "throughput": [], "memory": []}

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result | {"load_avg_end": list(os.getloadavg())}, indent=1))

    coco = Path(args.data) / "coco-mini"
    if args.synthetic or not coco.exists():
        if not args.synthetic:
            print(f"coco-mini not found at {coco}: throughput on the synthetic shapes scenes")
        from mmtransfer.synthetic import write_shapes

        write_shapes(work / "shapes", n_train=400, n_test=1)
        manifest, name = work / "shapes" / "captions_train.jsonl", "shapes (400 scenes, 64 px)"
    else:  # a manifest beside a link to the photos (media must be inside the manifest's folder)
        (work / "coco").mkdir(exist_ok=True)
        link = work / "coco" / "images"
        if not link.exists():
            link.symlink_to((coco / "images").resolve(), target_is_directory=True)
        manifest = work / "coco" / "captions.jsonl"
        shutil.copyfile(coco / "captions.jsonl", manifest)
        name = "coco-mini (80 photos)"
    specs = write_formats(manifest, work / "coco", per_shard=20)
    for fmt in FORMATS:
        row = run_child(fmt, specs[fmt], args.repeat) | {"data": name, "repeat": args.repeat}
        result["throughput"].append(row)
        print("THROUGHPUT", json.dumps(row), flush=True)
        save()
    parts = args.parts.split(",")
    for size in (args.base, 10 * args.base) if "memory" in parts else ():
        gen = work / "generated"
        specs = write_formats(generated(gen, size), gen / str(size), per_shard=500)
        for fmt in FORMATS:
            row = run_child(fmt, specs[fmt], 1) | {"samples_in_set": size}
            result["memory"].append(row)
            print("MEMORY", json.dumps(row), flush=True)
            save()
        for sub in ("wds", "parquet", "hfdir"):  # the 10x set is large: keep the disk clean
            shutil.rmtree(gen / str(size) / sub, ignore_errors=True)
    print(f"\n| format | {name}: images/s | peak RSS (MB) |\n|---|---|---|")
    for r in result["throughput"]:
        print(f"| {r['format']} | {r['samples_per_s']} | {r['peak_rss_mb']} |")
    if "memory" not in parts:
        save()
        print(f"\nwritten to {args.out}")
        return
    print(f"\n| format | peak RSS (MB), {args.base} samples | {10 * args.base} samples | ratio |\n|---|---|---|---|")
    for fmt in FORMATS:
        small, large = (next(r for r in result["memory"] if r["format"] == fmt and r["samples_in_set"] == s)
                        for s in (args.base, 10 * args.base))
        print(f"| {fmt} | {small['peak_rss_mb']} | {large['peak_rss_mb']} | "
              f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} |")
    save()
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
