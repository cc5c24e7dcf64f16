"""Run by test_fsdp.py under torch.distributed.run: train a recipe, then write this rank's parameter bytes (its own
shards and the whole model's). ``--stop-after N`` ends every rank right after the checkpoint of step N is written,
as a kill there would; ``--resume`` continues from it.

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/fsdp_worker.py CONFIG OUT [key=value ...]
"""

import json
import os
import sys
from pathlib import Path

import torch

from mmtransfer.train import load_train_config, loop, train


def main() -> None:
    args = sys.argv[1:]
    stop = None
    if "--stop-after" in args:
        i = args.index("--stop-after")
        stop = int(args[i + 1])
        del args[i : i + 2]
    resume = "--resume" in args
    args = [a for a in args if a != "--resume"]
    config, out, *overrides = args
    captured = {}
    real_start, real_save = loop._start_stage, loop._save_checkpoint

    def start(model, *rest):
        captured["model"] = model
        return real_start(model, *rest)

    def save(model, opt, sched, data, cfg, acc, state):
        written = real_save(model, opt, sched, data, cfg, acc, state)
        if state.step == stop:
            torch.distributed.barrier()
            os._exit(0)  # as if killed just after this checkpoint
        return written

    loop._start_stage, loop._save_checkpoint = start, save
    train(load_train_config(config, overrides), resume=resume)
    model = captured["model"]
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in model.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    rank = torch.distributed.get_rank()
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"local_bytes": local, "total_bytes": total,
                                                          "sharded": type(model).__name__.startswith("FSDP")}))
    print(f"rank {rank}: {local} of {total} parameter bytes resident")


if __name__ == "__main__":
    main()
