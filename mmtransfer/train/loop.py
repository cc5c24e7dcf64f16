"""The training loop: small plain functions on top of Accelerate (one CPU, one GPU, DDP or FSDP via
``accelerate launch`` / ``torchrun``). ``train(cfg)`` is the entry point."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mmtransfer import media_gain
from mmtransfer.data import DataError, Skip
from mmtransfer.errors import ConfigError, WeightsNotFoundError
from mmtransfer.model import MultimodalGPT
from mmtransfer.model.builder import build_model
from mmtransfer.model.card import training_record
from mmtransfer.model.saving import load, save_pretrained
from mmtransfer.train import checkpoint as ckpt
from mmtransfer.train import sharding, tracking
from mmtransfer.train.config import StageConfig, TrainConfig
from mmtransfer.train.data import TrainData, build_data
from mmtransfer.train.logger import RunLogger
from mmtransfer.train.optim import make_optimizer
from mmtransfer.train.precision import enable_cpu_fp16, half_dtype, resolve_precision
from mmtransfer.trainable import is_frozen


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses or gradients in a row; nothing was saved from the bad state."""


@dataclass
class RunState:
    """Counters that a checkpoint stores and a resumed run restores."""

    step: int = 0  # optimiser steps over all stages
    stage: int = 0
    stage_step: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    best: float | None = None
    overflow: int = 0  # training rows left out because prefixes + text exceed the decoder's context


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train through every stage; returns the final metrics. Writes ``final/``, ``best/``, ``checkpoint/``."""
    out = Path(cfg.output_dir)
    acc = _accelerator(cfg)
    set_seed(cfg.seed)
    resume_dir = out / "checkpoint"
    resuming = resume and ckpt.exists(resume_dir)
    try:
        model = _initial_model(cfg, resume_dir if resuming else None)
    except (ConfigError, WeightsNotFoundError) as err:  # their messages name the field; add the recipe file
        raise type(err)(f"{cfg.source}: model: {err}") from err
    _place(model, acc, cfg)
    data = build_data(cfg, model, rank=acc.process_index, world_size=acc.num_processes)
    state = RunState()
    if resuming:
        saved = ckpt.read_state(resume_dir)
        state = RunState(**saved["run"])
        data.load_state_dict(saved["data"])
        if acc.scaler is not None and saved.get("scaler"):  # fp16: the loss scale goes on where it was
            acc.scaler.load_state_dict(saved["scaler"])
    tracking.start(acc, cfg)
    logger = RunLogger(out, enabled=acc.is_main_process, every=cfg.log_every,
                       track=(lambda values, step: acc.log(values, step=step)) if acc.log_with else None)
    bar = tqdm(total=sum(s.steps for s in cfg.stages), initial=state.step, disable=not acc.is_main_process,
               desc="train", dynamic_ncols=True)
    for index, stage in enumerate(cfg.stages[state.stage :], start=state.stage):
        model_p, opt, sched = _start_stage(model, stage, cfg, acc)
        if resuming and index == state.stage:
            ckpt.load_training_state(resume_dir, opt, sched, model)
        else:
            state.stage, state.stage_step = index, 0
        _run_stage(model, model_p, opt, sched, stage, cfg, acc, data, state, logger, bar)
    bar.close()
    metrics = _eval_and_keep_best(model, data, cfg, acc, state, logger)
    tensors, _ = sharding.full_state(model)  # a sharded model is gathered on rank 0 (every rank takes part)
    examples = []
    if acc.is_main_process or tensors is not None:  # a sharded model generates on every rank in lockstep
        with sharding.evaluating(model):
            examples = data.examples(model, 4, cfg.max_new_tokens)
    if acc.is_main_process:
        _check_finite(model, state, tensors)
        save_pretrained(model, out / "final", training=training_record(cfg, metrics, state.step), tensors=tensors)
        logger.finish()
        tracking.log_predictions(acc, examples, state.step)
        for row in examples:
            print(f"[{row.dataset}] reference: {row.reference!r}  prediction: {row.prediction!r}")
        if data.skipped:
            print(f"{data.skipped} training samples were skipped (see the messages above)")
    tracking.finish(acc)
    return metrics


def _initial_model(cfg: TrainConfig, resume_dir: Path | None) -> MultimodalGPT:
    """From the resume checkpoint, else from ``init_from`` (e.g. a jointly pretrained model), else the config."""
    if resume_dir is not None:
        return ckpt.load_model(resume_dir)
    if cfg.init_from:
        model = load(cfg.init_from)
        model.set_trainable(cfg.model.trainable)
        return model
    return build_model(cfg.model)


def _accelerator(cfg: TrainConfig) -> Accelerator:
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    mixed = resolve_precision(cfg.precision, device_type)
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=len(cfg.data) > 1)]
    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, mixed) and not dist.is_initialized():
        AcceleratorState._reset_state()  # a later run in this process with another precision (tests, notebooks)
    acc = Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=cfg.optim.grad_accum,
        cpu=device_type == "cpu", kwargs_handlers=kwargs, **tracking.accelerator_kwargs(cfg),
    )
    enable_cpu_fp16(acc)
    return acc


def _place(model: MultimodalGPT, acc: Accelerator, cfg: TrainConfig) -> None:
    """Move to the device; frozen encoders may run in half precision on GPU; gradient checkpointing."""
    model.to(acc.device)
    dtype = half_dtype(acc.mixed_precision)
    if dtype is not None and cfg.half_frozen_encoders and acc.device.type == "cuda":
        for encoder in model.encoders.values():
            if is_frozen(encoder):
                encoder.to(dtype)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()


def _start_stage(
    model: MultimodalGPT, stage: StageConfig, cfg: TrainConfig, acc: Accelerator
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    if stage.trainable is not None:
        if sharding.is_sharded(model):
            raise ConfigError(f"{cfg.source}: stages: stage '{stage.name}' changes what trains, which FSDP on the "
                              "CPU cannot do to a model it has sharded; give the first stage its trainable parts")
        model.set_trainable(stage.trainable)
        model.to(acc.device)  # LoRA adapters added by a stage start on the CPU
    if sharding.requested(acc.device):  # FSDP on the CPU: sharded here, not by Accelerate (see sharding.py)
        if not sharding.is_sharded(model):
            sharding.shard(model)
        opt, sched = make_optimizer(model, cfg.optim, stage.lr or cfg.optim.lr, stage.steps)
        opt, sched = acc.prepare(opt, sched)
        return model, opt, sched
    opt, sched = make_optimizer(model, cfg.optim, stage.lr or cfg.optim.lr, stage.steps)
    model_p, opt, sched = acc.prepare(model, opt, sched)
    return model_p, opt, sched


def _run_stage(
    model: MultimodalGPT, model_p: torch.nn.Module, opt: Any, sched: Any, stage: StageConfig,
    cfg: TrainConfig, acc: Accelerator, data: TrainData, state: RunState, logger: RunLogger, bar: tqdm,
) -> None:
    model_p.train()
    t0, seen, save_due = time.perf_counter(), 0, False
    while state.stage_step < stage.steps:
        task, batch = data.next_batch()
        loss = _train_step(model_p, batch, opt, sched, cfg, acc, state, stage.objective)
        state.step += 1
        state.stage_step += 1
        seen += batch["input_ids"].shape[0] * acc.num_processes
        rate = seen / (time.perf_counter() - t0)
        curve = task if stage.objective == "lm" else f"{task}/{stage.objective}"  # another loss: its own curve
        logger.log_train(state.step, stage.name, curve, loss, sched.get_last_lr()[0], rate,
                         last=state.stage_step == stage.steps)
        bar.set_postfix(stage=stage.name, task=task, loss=f"{loss:.3f}", samples_s=f"{rate:.1f}")
        bar.update(1)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and state.stage_step < stage.steps:
            _eval_and_keep_best(model, data, cfg, acc, state, logger)
            model_p.train()
        save_due |= bool(cfg.save_every) and state.step % cfg.save_every == 0
        if save_due:  # put off while non-finite steps run on, until a step is finite again
            save_due = not _save_checkpoint(model, opt, sched, data, cfg, acc, state)
    _save_checkpoint(model, opt, sched, data, cfg, acc, state)


def _train_step(
    model_p: torch.nn.Module, batch: dict[str, Any], opt: Any, sched: Any,
    cfg: TrainConfig, acc: Accelerator, state: RunState, objective: str = "lm",
) -> float:
    """One forward/backward/update. A non-finite loss or gradient skips the update (on every rank)."""
    with acc.accumulate(model_p):
        kwargs = {"objective": objective} if objective != "lm" else {}
        out = model_p(**TrainData.model_inputs(batch, acc.device), **kwargs)
        loss = out.loss
        _report_overflow(batch, out.overflow, state)
        if not _all_finite(acc, loss):
            opt.zero_grad(set_to_none=True)
            _count_nonfinite(state, cfg, f"loss {loss.item()}")
            return float("nan")
        acc.backward(loss)
        if acc.sync_gradients and cfg.optim.grad_clip:
            norm = acc.clip_grad_norm_(model_p.parameters(), cfg.optim.grad_clip)
            if acc.mixed_precision != "fp16" and not _all_finite(acc, norm):  # fp16: the GradScaler skips
                opt.zero_grad(set_to_none=True)
                _count_nonfinite(state, cfg, f"gradient norm {float(norm)}")
                return loss.item()
        scale = acc.scaler.get_scale() if acc.scaler is not None else None
        opt.step()
        if scale is not None and acc.sync_gradients and acc.scaler.get_scale() < scale:  # fp16: backed off
            opt.zero_grad(set_to_none=True)
            _count_nonfinite(state, cfg, f"fp16 gradient (loss scale {scale:g} -> {acc.scaler.get_scale():g})")
            return loss.item()
        sched.step()
        opt.zero_grad(set_to_none=True)
    state.nonfinite_in_row = 0
    return loss.item()


def _report_overflow(batch: dict[str, Any], rows: list[int], state: RunState) -> None:
    """Rows the model left out of the loss (prefixes + text past the decoder's context): skipped and counted
    with ``file:line``, or ``DataError`` under ``on_error: raise``."""
    for i in rows:
        path, line = batch["sources"][i]
        skip = Skip(str(path), line, "prefixes + text exceed the decoder's context (too many or too long media?)")
        if batch.get("on_error") == "raise":
            raise DataError(str(skip))
        state.overflow += 1
        tqdm.write(f"skipped {skip}")


def _all_finite(acc: Accelerator, value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every process (all must skip together, or DDP would hang)."""
    flag = torch.isfinite(sharding.plain(value).detach().float()).all().to(acc.device).float().reshape(1)
    return bool(acc.reduce(flag, reduction="sum").item() == acc.num_processes) if acc.num_processes > 1 \
        else bool(flag.item())


def _count_nonfinite(state: RunState, cfg: TrainConfig, what: str) -> None:
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    tqdm.write(f"warning: non-finite {what} at step {state.step + 1}: update skipped "
               f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in all)")
    if state.nonfinite_in_row >= cfg.max_nonfinite:
        raise NonFiniteLossError(
            f"{state.nonfinite_in_row} non-finite steps in a row (limit max_nonfinite={cfg.max_nonfinite}) at "
            f"step {state.step + 1}: lower the learning rate, check the data, or use bf16/fp32. "
            "Nothing was saved from this state; the last checkpoint is intact."
        )


def _evaluate(model: MultimodalGPT, data: TrainData, cfg: TrainConfig, acc: Accelerator) -> dict[str, float]:
    """Every dataset's eval split on the main process, other processes waiting; a sharded model evaluates on every
    rank in lockstep (each forward gathers its shards from all of them). The main process returns the metrics."""
    metrics: dict[str, float] = {}
    if acc.is_main_process or sharding.is_sharded(model):
        model.eval()
        with sharding.evaluating(model):
            metrics = data.evaluate(model, cfg.eval_batch_size, cfg.max_new_tokens, cfg.media_gain)
    acc.wait_for_everyone()
    return metrics if acc.is_main_process else {}


def _eval_and_keep_best(
    model: MultimodalGPT, data: TrainData, cfg: TrainConfig, acc: Accelerator, state: RunState, logger: RunLogger
) -> dict[str, float]:
    metrics = _evaluate(model, data, cfg, acc)
    tensors, _ = sharding.full_state(model)
    if not acc.is_main_process or not metrics:
        return metrics
    logger.log_eval(state.step, metrics)
    for line in media_gain.warnings(metrics) if state.step else []:  # an untrained model may well ignore them
        tqdm.write(line)
    key, higher = data.primary_metric()
    value = metrics[key] if higher else -metrics[key]
    if not math.isnan(value) and (state.best is None or value > state.best) and not _nonfinite_params(model, tensors):
        state.best = value
        save_pretrained(model, Path(cfg.output_dir) / "best", training=training_record(cfg, metrics, state.step),
                        tensors=tensors)
    return metrics


def _save_checkpoint(
    model: MultimodalGPT, opt: Any, sched: Any, data: TrainData, cfg: TrainConfig, acc: Accelerator,
    state: RunState,
) -> bool:
    """Write ``checkpoint/``, except while non-finite steps run on (the model may be diverging: the last
    checkpoint stays as it is). Returns whether it was written."""
    if state.nonfinite_in_row:
        tqdm.write(f"step {state.step}: checkpoint put off, the last step was not finite")
        return False
    acc.wait_for_everyone()
    tensors, optim = sharding.full_state(model, opt)  # sharded: gathered on rank 0 (a collective)
    if tensors is None:
        _check_finite(model, state)
    data_state = data.state_dict()  # on every rank: it gathers every rank's position
    if acc.is_main_process:
        _check_finite(model, state, tensors)
        scaler = acc.scaler.state_dict() if acc.scaler is not None else None
        ckpt.save_checkpoint(Path(cfg.output_dir) / "checkpoint", model, opt, sched,
                             {"run": asdict(state), "data": data_state, "scaler": scaler}, tensors, optim)
    acc.wait_for_everyone()
    return True


def _nonfinite_params(model: MultimodalGPT, tensors: dict[str, torch.Tensor] | None = None) -> list[str]:
    """The trained parameters holding NaN or inf: read from ``tensors`` (a sharded model's gathered state) if given."""
    values = tensors if tensors is not None else dict(model.named_parameters())
    return [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(values[n]).all())]


def _check_finite(model: MultimodalGPT, state: RunState, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Refuse to save trained weights that hold NaN or inf (an update can overflow with finite gradients)."""
    bad = _nonfinite_params(model, tensors)
    if bad:
        raise NonFiniteLossError(
            f"{len(bad)} trained tensors hold NaN or inf at step {state.step} (e.g. {bad[0]}): lower the learning "
            "rate or use bf16/fp32. Nothing was saved from this state; the last checkpoint is intact."
        )
