"""The training run's data: one loader per dataset, a weighted Mixture over them, and the eval splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmtransfer import media_gain as gain
from mmtransfer.data import (
    MODEL_INPUTS,
    Collator,
    FeatureCache,
    Mixture,
    TaskDataset,
    make_loader,
    read_manifest,
)
from mmtransfer.data.conversations import read_conversations
from mmtransfer.errors import NoSamplesError
from mmtransfer.modalities import modality
from mmtransfer.model import MultimodalGPT
from mmtransfer.processing import to_device
from mmtransfer.tasks import Task, get_task
from mmtransfer.train.config import DatasetConfig, TrainConfig
from mmtransfer.train.tracking import Prediction
from mmtransfer.trainable import is_frozen


class TrainData:
    """``next_batch()`` for training, ``evaluate()`` for every eval split, resumable via ``state_dict()``."""

    def __init__(
        self, mixture: Mixture, eval_sets: dict[str, tuple[Task, TaskDataset]], primary: tuple[str, bool],
        rank: int = 0, world_size: int = 1,
    ) -> None:
        self.mixture = mixture
        self.eval_sets = eval_sets
        self.primary = primary
        self.skipped = 0
        self.rank, self.world_size = rank, world_size
        self._empty_since: dict[str, tuple[int, int]] = {}  # dataset -> where its run of empty batches began

    def next_batch(self) -> tuple[str, dict[str, Any]]:
        """The next (task, batch) with at least one sample; batches whose files all failed are passed over, and a
        dataset that goes a whole epoch without one usable sample raises ``NoSamplesError`` (instead of cycling
        through its skips for ever)."""
        while True:
            task, batch = next(self.mixture)
            self._report(batch)
            if "input_ids" in batch:
                self._empty_since.pop(task, None)
                return task, batch
            epoch = self.mixture.positions[task][0]
            since = self._empty_since.setdefault(task, tuple(self.mixture.positions[task]))
            # a whole epoch was empty: the run began at its first batch and the next epoch started, or the run
            # covers every batch of the epoch after the one it began in (epochs may differ in length and order)
            if epoch >= since[0] + (1 if since[1] == 1 else 2):
                where = f" on rank {self.rank}" if self.world_size > 1 else ""
                raise NoSamplesError(f"dataset '{task}': not one usable sample in a whole epoch{where} (every one was "
                                     "skipped: see the messages above)")

    def _report(self, batch: dict[str, Any]) -> None:
        for skip in batch["skipped"]:
            tqdm.write(f"skipped {skip.path}:{skip.line}: {skip.reason}")
        self.skipped += batch["n_skipped"]

    @staticmethod
    def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """The batch's model arguments, on ``device``."""
        return to_device({k: v for k, v in batch.items() if k in MODEL_INPUTS}, device)

    @torch.no_grad()
    def evaluate(self, model: MultimodalGPT, batch_size: int, max_new_tokens: int,
                 media_gain: bool = True) -> dict[str, float]:
        """``{"<task>/<metric>": value}`` over every eval split, with its ``loss`` and (``media_gain``) each
        modality's media gain (``<task>/gain/<kind>/...``, see ``mmtransfer.media_gain``)."""
        metrics: dict[str, float] = {}
        for name, (task, dataset) in self.eval_sets.items():
            kwargs = task.generation_kwargs(max_new_tokens)
            for key, value in gain.evaluate(model, task, dataset, batch_size, media_gain, **kwargs).items():
                metrics[f"{name}/{key}"] = value
        return metrics

    @torch.no_grad()
    def examples(self, model: MultimodalGPT, n: int, max_new_tokens: int) -> list[Prediction]:
        """The first ``n`` samples of each eval split: reference, prediction and the decoded input medium."""
        rows = []
        for name, (task, dataset) in self.eval_sets.items():
            samples = [dataset[i] for i in range(min(n, len(dataset)))]
            samples = [s for s in samples if isinstance(s, dict)]
            kwargs = task.generation_kwargs(max_new_tokens)
            for sample, pred in zip(samples, task.predict(model, samples, n, **kwargs)):
                kind = task.modality if task.modality is not None and sample.get(task.modality) is not None else None
                rows.append(Prediction(name, task.references(sample)[0], pred, kind,
                                       sample.get(kind) if kind else None, sample.get("sample_rate")))
        return rows

    def primary_metric(self) -> tuple[str, bool]:
        """(metric key, higher is better) of the first dataset with an eval split: picks the best checkpoint."""
        return self.primary

    def state_dict(self) -> dict[str, Any]:
        """The data position and skip count. With several processes (every rank calls it: a collective) also
        every rank's own, ``rank_mixtures`` (a streaming source's epochs and positions differ by rank) and
        ``rank_skipped``; ``skipped`` is then their sum."""
        state = {"mixture": self.mixture.state_dict(), "skipped": self.skipped}
        if self.world_size > 1:
            from accelerate.utils import gather_object

            ranks = gather_object([(state["mixture"], self.skipped)])
            state["rank_mixtures"] = [mixture for mixture, _ in ranks]
            state["rank_skipped"] = [skipped for _, skipped in ranks]
            state["skipped"] = sum(state["rank_skipped"])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: this rank from its own entries of ``rank_mixtures`` / ``rank_skipped``
        where there are (a rank the checkpoint has none for, or a one-process checkpoint, starts from the
        shared ones)."""
        ranks, skips = state.get("rank_mixtures", []), state.get("rank_skipped", [])
        self.mixture.load_state_dict(ranks[self.rank] if self.rank < len(ranks) else state["mixture"])
        self.skipped = skips[self.rank] if self.rank < len(skips) else state["skipped"]


def build_data(cfg: TrainConfig, model: MultimodalGPT, rank: int = 0, world_size: int = 1) -> TrainData:
    """Read every manifest (bad lines reported and skipped, or raised, per ``on_error``) and build loaders."""
    names = [ds.name or ds.task for ds in cfg.data]  # distinct: checked with the recipe (train.config)
    loaders, weights, eval_sets = {}, {}, {}
    for name, ds in zip(names, cfg.data):
        task = get_task(ds.task)
        loaders[name] = _train_loader(ds, task, cfg, model, rank, world_size)
        weights[name] = ds.weight
        if ds.eval:
            eval_sets[name] = (task, _dataset(ds, task, model, ds.eval, ds.max_eval_samples, train=False))
    primary = ("", True)
    if eval_sets:
        name, (task, _) = next(iter(eval_sets.items()))
        primary = (f"{name}/{task.primary_metric}", task.higher_is_better)
    return TrainData(Mixture(loaders, weights, seed=cfg.seed), eval_sets, primary, rank, world_size)


def eval_dataset(ds: DatasetConfig, model: MultimodalGPT) -> TaskDataset:
    """The eval split of one dataset, read the way training reads it (JSONL manifest, conversation file,
    WebDataset shards or an HF dataset; ``media_root``, ``on_error``, labels, sample rate): what ``mmtransfer
    eval`` scores."""
    return _dataset(ds, get_task(ds.task), model, ds.eval or ds.train, ds.max_eval_samples, train=False)


def _dataset(
    ds: DatasetConfig, task: Task, model: MultimodalGPT, path: str, limit: int | None, train: bool,
    caches: dict[str, FeatureCache] | None = None,
) -> TaskDataset:
    if ds.source != "jsonl":  # an eval split of a streaming source: its first samples, in memory
        manifest = _stream_samples(ds, task, model, path, limit, split=ds.train_split if train else ds.eval_split)
    elif task.conversational:
        manifest = read_conversations(path, ds.format, on_error=ds.on_error, media_root=ds.media_root)
    else:
        manifest = read_manifest(path, task, labels=task.class_names(model), on_error=ds.on_error,
                                 max_audio_seconds=ds.max_audio_seconds, media_root=ds.media_root)
    samples = list(manifest)[:limit] if limit else list(manifest)
    if not samples:
        raise NoSamplesError(f"{path}: no usable samples (skipped {len(manifest.skipped)})")
    return _task_dataset(samples, ds, task, model, train, caches)


def _task_dataset(samples: list, ds: DatasetConfig, task: Task, model: MultimodalGPT, train: bool,
                  caches: dict[str, FeatureCache] | None) -> TaskDataset:
    """The dataset that decodes ``samples`` (a streaming loader's: none, it decodes the entries it reads)."""
    audio = dict(model.encoders.items()).get("audio")
    timed = task.modality is None or modality(task.modality).timed  # a text task's conversations may hold audio
    rate = audio.sample_rate if audio is not None and timed else None
    return TaskDataset(samples, task, sample_rate=rate, on_error=ds.on_error, expand_targets=train,
                       cached={k: c.contains for k, c in (caches or {}).items()},
                       video_frames=model.config.video_frames)


def _train_loader(
    ds: DatasetConfig, task: Task, cfg: TrainConfig, model: MultimodalGPT, rank: int, world_size: int
) -> torch.utils.data.DataLoader:
    caches = {}
    for kind in task.media_kinds(model) if cfg.feature_cache else []:
        encoder = model.encoders[kind]
        if is_frozen(encoder):  # only a frozen encoder's outputs are fixed
            caches[kind] = FeatureCache(Path(cfg.feature_cache), encoder)
    collator = Collator(model, task, cache=caches, on_error=ds.on_error, max_text_tokens=ds.max_text_tokens,
                        loss_on=ds.loss_on, pack_tokens=cfg.pack_tokens if cfg.packing else None)
    if ds.source != "jsonl":
        return _stream_loader(ds, task, cfg, model, rank, world_size, caches, collator)
    dataset = _dataset(ds, task, model, ds.train, ds.max_train_samples, train=True, caches=caches)
    return make_loader(dataset, collator, cfg.batch_size, shuffle=True, seed=cfg.seed,
                       bucket=ds.bucket, num_workers=cfg.num_workers, rank=rank, world_size=world_size)


def _stream_samples(ds: DatasetConfig, task: Task, model: MultimodalGPT, path: str, limit: int | None,
                    split: str) -> list:
    """The first ``limit`` samples of a webdataset / hf source (an eval split), bad ones reported per on_error."""
    from mmtransfer.data.records import Manifest
    from mmtransfer.data.samples import ToSample
    from mmtransfer.data.source import read_samples
    from mmtransfer.data.streaming import open_source

    source = open_source(ds.source, path, task, ds.columns, split=split, where=path)
    samples, skipped = read_samples(source, ToSample(task, task.class_names(model), ds.max_audio_seconds), limit,
                                    ds.on_error)
    return Manifest(Path(path), samples, skipped)


def _stream_loader(
    ds: DatasetConfig, task: Task, cfg: TrainConfig, model: MultimodalGPT, rank: int, world_size: int,
    caches: dict[str, FeatureCache], collator: Collator,
) -> torch.utils.data.DataLoader:
    """A streaming training loader (mmtransfer.data.streaming): the dataset is read as it trains."""
    from mmtransfer.data.samples import ToSample
    from mmtransfer.data.streaming import StreamingDataset, make_stream_loader, open_source

    source = open_source(ds.source, ds.train, task, ds.columns, split=ds.train_split, where=ds.train)
    items = _task_dataset([], ds, task, model, True, caches)  # decodes each sample the stream reads
    dataset = StreamingDataset(source, ToSample(task, task.class_names(model), ds.max_audio_seconds), items, collator,
                               cfg.batch_size, seed=cfg.seed, shuffle_buffer=ds.shuffle_buffer,
                               rank=rank, world_size=world_size, num_workers=cfg.num_workers, on_error=ds.on_error)
    return make_stream_loader(dataset, cfg.num_workers, seed=cfg.seed)
