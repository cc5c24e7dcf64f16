"""Run by test_train.py under torch.distributed.run: train, then write a checksum of this rank's weights and,
for each of its training batches, the media kinds it held and its samples (epoch, manifest line numbers)."""

import json
import sys
from pathlib import Path

import torch

from mmtransfer.model.builder import build_model
from mmtransfer.train import data as train_data
from mmtransfer.train import load_train_config, loop, train


def main() -> None:
    config, out, *overrides = sys.argv[1:]
    captured = {}
    real_build = loop.build_model

    def build(cfg):  # keep a handle on this rank's model
        captured["model"] = real_build(cfg)
        return captured["model"]

    loop.build_model = build
    real_next = train_data.TrainData.next_batch
    kinds, samples = [], []

    def next_batch(self):  # record which media and which samples each training batch of this rank held
        name, batch = real_next(self)
        kinds.append(sorted(k for k in ("image", "audio") if k in batch))
        epoch = self.mixture.positions[name][0]  # the epoch this batch came from
        samples.append({"epoch": epoch, "lines": [line for _, line in batch["sources"]]})
        return name, batch

    train_data.TrainData.next_batch = next_batch
    train(load_train_config(config, overrides))
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    params = {n: round(float(p.double().sum()), 10) for n, p in captured["model"].named_parameters()}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"world_size": world, "params": params, "kinds": kinds,
                                                          "samples": samples}))


if __name__ == "__main__":
    assert build_model is not None
    main()
