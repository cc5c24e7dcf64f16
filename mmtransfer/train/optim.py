"""Optimiser and schedule: per-component learning rates, weight decay only on matrices."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from mmtransfer.errors import ConfigError
from mmtransfer.model import MultimodalGPT
from mmtransfer.train.config import OptimConfig


def param_groups(model: MultimodalGPT, cfg: OptimConfig, lr: float) -> list[dict]:
    """AdamW groups: (component lr) x (decay for >=2-D weights, none for biases / norms)."""
    lrs = {"projectors": cfg.projector_lr, "head": cfg.projector_lr, "encoders": cfg.encoder_lr, "decoder": lr}
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.split(".")[0], p.ndim >= 2), []).append(p)
    return [
        {"params": ps, "lr": lrs[part], "weight_decay": cfg.weight_decay if decay else 0.0, "name": f"{part}"}
        for (part, decay), ps in sorted(groups.items())
    ]


def _can_fuse(groups: list[dict]) -> bool:
    """torch's fused AdamW (one kernel per step instead of a dozen passes over every parameter; the
    transformers Trainer default) takes floating-point parameters on CPU or CUDA."""
    params = [p for g in groups for p in g["params"]]
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_optimizer(
    model: MultimodalGPT, cfg: OptimConfig, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    groups = param_groups(model, cfg, lr)
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen (check trainable / stages)")
    opt = torch.optim.AdamW(groups, betas=cfg.betas, fused=_can_fuse(groups))
    sched = get_scheduler(cfg.schedule, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=steps)
    return opt, sched
