"""Learning curves of benchmark runs: training loss against steps and against wall minutes, one PNG per set.

Each run's ``log.jsonl`` gives the LM loss every ``log_every`` steps and the samples/s since its stage began (so the
minutes are ``samples seen / rate``, summed over stages); its last eval record (the final metric and media gain)
goes into the legend.

    python benchmarks/curves.py --out docs/curves-speech.png --title "speechocean762" --batch-size 8 \\
        "ours=outputs/bench/speech/runs/ours" "before=outputs/bench/speech/runs/before"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(run: Path, batch_size: int) -> tuple[list[int], list[float], list[float], dict[str, float]]:
    """(steps, LM losses, minutes, last eval metrics) of one run's ``log.jsonl``. Another objective's stage (a CTC
    alignment stage logs ``asr/ctc``) is not plotted, but its steps and minutes count: the LM curve starts after it."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    clock: list[tuple[int, float, str, float]] = []  # (step, minutes, task, loss) of every record
    done, stage_start, stage = 0.0, 0, None
    for r in (r for r in rows if "loss" in r):
        if clock and r["step"] <= clock[-1][0]:  # a run started again in the same folder: its records win
            clock = [c for c in clock if c[0] < r["step"]]
            stage = None
        if r["stage"] != stage:  # a new stage: its rate restarts
            done = clock[-1][1] if clock else 0.0
            stage, stage_start = r["stage"], clock[-1][0] if clock else 0
        clock.append((r["step"], done + (r["step"] - stage_start) * batch_size / r["samples_s"] / 60, r["task"],
                      r["loss"]))
    lm = [c for c in clock if "/" not in c[2]]
    evals = [r["eval"] for r in rows if "eval" in r]
    return [c[0] for c in lm], [c[3] for c in lm], [c[1] for c in lm], evals[-1] if evals else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="label=run directory (holding log.jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--batch-size", type=int, default=16, help="the runs' batch size (for the minutes)")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for item in args.runs:
        label, _, path = item.rpartition("=")  # a label may hold "=" (k=8), a path does not
        run = Path(path)
        steps, losses, minutes, last = read_curve(run, args.batch_size)
        gains = ", ".join(f"{k.split('/gain/', 1)[1]} {v:+.3g}" for k, v in last.items() if "/gain/" in k)
        primary = ", ".join(f"{k.split('/', 1)[1]} {v:.3g}" for k, v in last.items()
                            if "/gain/" not in k and not k.endswith("/loss"))
        name = f"{label}: {primary}" + (f" (gain: {gains})" if gains else "")
        by_step.plot(steps, losses, label=name)
        by_time.plot(minutes, losses, label=label)
    by_step.set(xlabel="step", ylabel="training loss (nats/token)", title=args.title)
    by_time.set(xlabel="wall minutes (2-core CPU, shared with other runs)", ylabel="training loss")
    by_step.legend(fontsize=7, loc="upper right")
    by_time.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
