"""Run by test_streaming.py under torch.distributed.run: train RECIPE for STEPS steps, then resume the same run
to TOTAL steps (in the same processes), and write per rank a checksum of its weights and, for each of its
training batches, the epoch and the samples' keys."""

import json
import sys
from pathlib import Path

import torch

from mmtransfer.train import data as train_data
from mmtransfer.train import load_train_config, loop, train


def main() -> None:
    config, out, steps, total, *overrides = sys.argv[1:]
    captured, samples = {}, []
    real_place, real_next = loop._place, train_data.TrainData.next_batch

    def place(model, *args):  # keep a handle on this rank's model (built, or loaded to resume)
        captured["model"] = model
        return real_place(model, *args)

    def next_batch(self):
        name, batch = real_next(self)
        samples.append({"epoch": self.mixture.positions[name][0], "keys": [key for _, key in batch["sources"]]})
        return name, batch

    loop._place, train_data.TrainData.next_batch = place, next_batch
    train(load_train_config(config, [*overrides, f"stages.0.steps={steps}"]))
    train(load_train_config(config, [*overrides, f"stages.0.steps={total}"]), resume=True)
    rank = torch.distributed.get_rank()
    params = {n: round(float(p.double().sum()), 10) for n, p in captured["model"].named_parameters()}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"params": params, "samples": samples}))


if __name__ == "__main__":
    main()
