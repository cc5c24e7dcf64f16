"""Losses at every step of bundled recipes, recorded once and compared after a change that must not change behaviour
(a refactor): the same recipe, data, seed and machine give the same losses, to the last bit.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/regression.py record --out outputs/bench/regression.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/regression.py compare outputs/bench/regression.json

Each recipe runs in a fresh temporary working directory holding the synthetic data (``mmtransfer make-data``), with
``log_every=1`` and a few steps, so ``log.jsonl`` holds every step's loss. ``quickstart`` needs the pip-packaged
weights (README, "Pretrained weights"); without them it falls back to ``captioning-tiny``, which is then recorded.
A recording is only comparable on the machine, install and thread count (``OMP_NUM_THREADS``) that made it. To check
a change, record on the commit before it and compare on the commit after (``PYTHONPATH=<old checkout>`` runs an older
commit's package from this script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPES = {"chat-tiny": 20, "quickstart": 20}  # recipe -> steps


def losses(recipe: str, steps: int) -> list[float]:
    """Every training step's loss of ``recipe`` run for ``steps`` steps on fresh synthetic data."""
    with tempfile.TemporaryDirectory() as work:
        env = os.environ | {"HF_HUB_OFFLINE": "1"}
        cli = [sys.executable, "-m", "mmtransfer.cli"]
        subprocess.run([*cli, "make-data", "data/synthetic"], cwd=work, env=env, check=True, capture_output=True)
        overrides = [f"output_dir={work}/out", "log_every=1", "eval_every=0", "media_gain=false"]
        done = subprocess.run([*cli, "train", recipe, *overrides, f"stages.0.steps={steps}"], cwd=work, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{recipe}: training failed:\n{done.stderr[-2000:]}")
        rows = [json.loads(line) for line in (Path(work) / "out" / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    record = sub.add_parser("record")
    record.add_argument("--out", required=True)
    record.add_argument("--recipes", default=",".join(RECIPES))
    compare = sub.add_parser("compare")
    compare.add_argument("recording")
    args = p.parse_args()
    if args.command == "record":
        recorded = {name: losses(name, RECIPES.get(name, 20)) for name in args.recipes.split(",")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(recorded, indent=1) + "\n")
        print(f"recorded {', '.join(f'{k} ({len(v)} steps)' for k, v in recorded.items())} to {args.out}")
        return
    recorded = json.loads(Path(args.recording).read_text())
    changed = 0
    for name, before in recorded.items():
        now = losses(name, len(before))
        diff = max((abs(a - b) for a, b in zip(before, now)), default=0.0)
        same = now == before
        changed += not same
        print(f"{name}: {'identical' if same else 'CHANGED'} at all {len(before)} steps (max |diff| {diff:.3g})")
    sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
