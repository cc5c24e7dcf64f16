"""Training configuration: one YAML file -> ``TrainConfig`` (model, data, stages, optimiser, run)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mmtransfer.bundled import find_recipe, is_bundled
from mmtransfer.chat import LOSS_ON
from mmtransfer.config import ConfigError, ModelConfig, TrainableConfig, apply_overrides, from_dict, load_yaml
from mmtransfer.data.conversations import FORMATS
from mmtransfer.data.records import ON_ERROR
from mmtransfer.data.sources import source_names
from mmtransfer.extras import require
from mmtransfer.tasks import get_task
from mmtransfer.train.tracking import TRACKERS


@dataclass
class DatasetConfig:
    """One task's data. Manifest paths are relative to the YAML file that names them."""

    task: str
    train: str
    eval: str | None = None
    weight: float = 1.0  # share of steps in a joint (multi-task) mixture
    on_error: str = "skip"  # bad samples: "skip" (reported and counted) or "raise"
    max_audio_seconds: float = 30.0  # longer clips are skipped (or raise)
    max_text_tokens: int | None = None  # longer prompt + target: skipped (or raise); None: the decoder's context
    bucket: bool = False  # length-bucketed batches (audio / text)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    name: str | None = None  # key in the mixture and in metric names; default: the task (one dataset per task)
    format: str = "auto"  # chat task: messages | llava | sharegpt | auto (see mmtransfer.data.conversations)
    loss_on: str = "all"  # chat task: loss on every assistant turn ("all") or on the last one ("last")
    # Streaming (README, "Streaming data"): where train / eval live. jsonl: manifests; webdataset: tar shards
    # ("shards/train-{000000..000009}.tar", a glob or a directory); hf: a save_to_disk directory, Parquet /
    # Arrow files, or a hub dataset name
    source: str = "jsonl"
    columns: dict[str, str] | None = None  # streaming: task field -> column (hf) or member extension / JSON key
    shuffle_buffer: int = 1000  # streaming: records shuffled in a seeded buffer per worker (0: shard order only)
    train_split: str = "train"  # hf: the split of a DatasetDict directory or hub dataset for training
    eval_split: str = "validation"  # hf: ... and for evaluation
    media_root: str | None = None  # JSONL / conversations: media paths resolve inside this folder (default: the file's)


@dataclass
class StageConfig:
    """A phase of training with its own trainable parts, e.g. "align" (projector only) then "finetune"."""

    name: str
    steps: int
    trainable: TrainableConfig | None = None  # None: keep the model's
    lr: float | None = None  # None: OptimConfig.lr
    objective: str = "lm"  # lm: the decoder's loss on the targets; ctc: align audio tokens first (mmtransfer.model.ctc)


@dataclass
class OptimConfig:
    """AdamW with per-component learning rates and weight decay on matrices only."""

    lr: float = 1e-4  # decoder (full / last:N / LoRA)
    projector_lr: float = 1e-3  # projectors and classification heads
    encoder_lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"  # any transformers scheduler name: cosine, linear, constant_with_warmup...
    warmup_steps: int = 0
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclass
class TrainConfig:
    """A whole run. In a YAML file, relative paths (manifests, ``output_dir``, ``init_from``,
    ``feature_cache``, and decoder model / tokenizer paths that start with ./ or ../) are relative to the
    YAML file (for a bundled recipe: to the working directory); ``fallback`` names a recipe beside it."""

    model: ModelConfig
    data: list[DatasetConfig]
    stages: list[StageConfig]
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 8
    packing: bool = False  # training batches run as packed decoder rows (see mmtransfer.packing)
    pack_tokens: int = 512  # packing: positions per row (prefix + text); a longer sample gets a row of its own
    eval_batch_size: int = 16
    eval_every: int = 0  # steps; 0: only at the end
    media_gain: bool = True  # every eval also scores each modality blanked (mmtransfer.media_gain): 2x eval cost
    save_every: int = 0  # steps; 0: only at the end (and the best checkpoint)
    log_every: int = 10  # log.jsonl / trackers: one record per task every N steps (mean loss over them)
    report_to: list[str] = field(default_factory=list)  # experiment trackers: tensorboard, wandb, mlflow
    run_name: str | None = None  # the trackers' run name (default: the output directory's name)
    project: str = "mmtransfer"  # the W&B project / MLflow experiment / TensorBoard folder under tensorboard/
    tensorboard: bool = False  # the same as report_to: [tensorboard] (events under <output_dir>/tensorboard)
    output_dir: str = "outputs/run"
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    half_frozen_encoders: bool = True  # on GPU: frozen encoders run in the half-precision dtype
    max_nonfinite: int = 5  # stop after this many non-finite steps in a row
    gradient_checkpointing: bool = False
    feature_cache: str | None = None  # directory: cache frozen encoders' outputs there
    num_workers: int = 0
    max_new_tokens: int = 32
    init_from: str | None = None  # a saved model directory to start from (e.g. after joint pretraining)
    fallback: str | None = None  # a recipe to run instead, loudly, when pretrained weights are missing
    source: str = "config"  # where this config came from (load_train_config sets the file): errors name it


def load_train_config(recipe: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe (a YAML file, or a bundled recipe's name such as ``quickstart``), apply ``key=value``
    overrides, resolve relative paths, validate. A file's relative paths start at its directory, a bundled
    recipe's at the working directory."""
    path = find_recipe(recipe)
    data = apply_overrides(load_yaml(path), list(overrides))
    cfg = train_config_from_dict(data, where=str(recipe))
    cfg.source = str(recipe)
    base = Path.cwd() if is_bundled(path) else path.parent
    for ds in cfg.data:
        ds.train = _resolve_data(base, ds.train, ds.source)
        ds.eval = _resolve_data(base, ds.eval, ds.source) if ds.eval else None
        ds.media_root = _resolve(base, ds.media_root) if ds.media_root else None
    cfg.output_dir = _resolve(base, cfg.output_dir)
    cfg.init_from = _resolve(base, cfg.init_from) if cfg.init_from else None
    cfg.feature_cache = _resolve(base, cfg.feature_cache) if cfg.feature_cache else None
    cfg.fallback = str(find_recipe(path.parent / cfg.fallback)) if cfg.fallback else None  # beside the recipe
    dec = cfg.model.decoder
    dec.model, dec.tokenizer = _resolve_local(base, dec.model), _resolve_local(base, dec.tokenizer)
    return cfg


def train_config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    for key in ("model", "data", "stages"):
        if key not in data:
            raise ConfigError(f"{where}: missing '{key}'")
    data = dict(data)
    model = from_dict(ModelConfig, data.pop("model"), f"{where}: model")
    datasets = [from_dict(DatasetConfig, d, f"{where}: data[{i}]") for i, d in enumerate(_as_list(data.pop("data")))]
    stages = [from_dict(StageConfig, s, f"{where}: stages[{i}]") for i, s in enumerate(_as_list(data.pop("stages")))]
    optim = from_dict(OptimConfig, data.pop("optim", {}), f"{where}: optim")
    optim.betas = tuple(optim.betas)
    cfg = from_dict(TrainConfig, {"model": None, "data": [], "stages": [], **data}, where)
    cfg.model, cfg.data, cfg.stages, cfg.optim = model, datasets, stages, optim
    _validate(cfg, where)
    return cfg


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _validate(cfg: TrainConfig, where: str) -> None:
    if not cfg.data:
        raise ConfigError(f"{where}: data: needs at least one dataset")
    if not cfg.stages:
        raise ConfigError(f"{where}: stages: needs at least one stage")
    trainable = cfg.model.trainable  # a stage without its own keeps what the stage before it set
    for i, stage in enumerate(cfg.stages):
        if stage.steps <= 0:
            raise ConfigError(f"{where}: stages[{i}].steps: must be > 0, got {stage.steps}")
        trainable = stage.trainable or trainable
        _check_objective(cfg, stage, trainable, f"{where}: stages[{i}]")
        _check_thawed_cache(cfg, stage, f"{where}: stages[{i}]")
    for name in ("batch_size", "eval_batch_size", "log_every", "pack_tokens"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where}: {name}: must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "save_every", "num_workers"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{where}: {name}: must be >= 0, got {getattr(cfg, name)}")
    if cfg.packing and cfg.model.classifier == "head":
        raise ConfigError(f"{where}: packing: needs the LM loss (model.classifier: lm); a classification head "
                          "reads each row's last position")
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"{where}: precision: '{cfg.precision}' is not auto, fp32, bf16 or fp16")
    names = [ds.name or ds.task for ds in cfg.data]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: data: dataset names must differ (set 'name' when two share a task), got {names}")
    for i, ds in enumerate(cfg.data):
        check_dataset(ds, f"{where}: data[{i}]")
    _check_packages(cfg, where)


def _check_thawed_cache(cfg: TrainConfig, stage: StageConfig, where: str) -> None:
    """A stage may train an encoder that starts frozen with a feature cache: the collator then sends the encoder's
    inputs again. DataLoader workers forked before the stage keep their frozen copy for the rest of that epoch."""
    if not (cfg.feature_cache and cfg.num_workers and stage.trainable):
        return
    for kind in (f.name.removesuffix("_encoder") for f in fields(TrainableConfig) if f.name.endswith("_encoder")):
        policy = stage.trainable.encoder(kind)
        if cfg.model.encoder(kind) is not None and cfg.model.trainable.encoder(kind) == "frozen" and policy != "frozen":
            raise ConfigError(f"{where}.trainable.{kind}_encoder: '{policy}' trains an encoder whose outputs "
                              f"feature_cache serves, and the DataLoader workers (num_workers: {cfg.num_workers}) "
                              "would keep serving them for the rest of the epoch; set num_workers: 0")


def _check_objective(cfg: TrainConfig, stage: StageConfig, trainable: TrainableConfig, where: str) -> None:
    """``objective: ctc`` trains audio tokens against transcripts without running the decoder: it needs speech
    data only, an audio encoder, and a frozen decoder (which would get no gradient)."""
    if stage.objective == "lm":
        return
    if stage.objective != "ctc":
        raise ConfigError(f"{where}.objective: '{stage.objective}' is not lm or ctc")
    if cfg.model.audio_encoder is None:
        raise ConfigError(f"{where}.objective: ctc aligns audio tokens; the model has no audio_encoder")
    tasks = [ds.task for ds in cfg.data if ds.task != "asr"]
    if tasks:
        raise ConfigError(f"{where}.objective: ctc needs speech-to-text data (task asr) only, got {', '.join(tasks)}")
    if trainable.decoder != "frozen":
        raise ConfigError(f"{where}.objective: ctc does not run the decoder; set this stage's trainable decoder: "
                          f"frozen (got {trainable.decoder})")


def _check_packages(cfg: TrainConfig, where: str) -> None:
    """The optional packages the run will need (eval scorers, TensorBoard), checked before it starts."""
    for i, ds in enumerate(cfg.data):
        try:
            task = get_task(ds.task)
        except KeyError as err:
            raise ConfigError(f"{where}: data[{i}].task: {err.args[0]}") from None
        if ds.eval:
            require(task.scorers, f"{where}: data[{i}]: evaluating {task.name}")
    if cfg.tensorboard:
        require(["tensorboard"], f"{where}: tensorboard")
    for name in cfg.report_to:
        if name not in TRACKERS:
            raise ConfigError(f"{where}: report_to: '{name}' is not one of {', '.join(TRACKERS)}")
        require([TRACKERS[name]], f"{where}: report_to: {name}")


def _resolve(base: Path, value: str) -> str:
    """A path relative to ``base`` (absolute and ~ paths are kept)."""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def check_dataset(ds: DatasetConfig, where: str) -> None:
    """One dataset's fields (on_error, weight, loss_on, format, source keys), as a recipe's are checked."""
    if ds.on_error not in ON_ERROR:
        raise ConfigError(f"{where}.on_error: '{ds.on_error}' is not {' or '.join(ON_ERROR)}")
    if ds.weight <= 0:
        raise ConfigError(f"{where}.weight: must be > 0")
    if ds.loss_on not in LOSS_ON:
        raise ConfigError(f"{where}.loss_on: '{ds.loss_on}' is not one of {', '.join(LOSS_ON)}")
    if ds.format not in FORMATS:
        raise ConfigError(f"{where}.format: '{ds.format}' is not one of {', '.join(FORMATS)}")
    _validate_source(ds, where)


def _validate_source(ds: DatasetConfig, where: str) -> None:
    """The streaming keys of one dataset (mmtransfer.data.streaming)."""
    if ds.source not in (names := source_names()):
        raise ConfigError(f"{where}.source: '{ds.source}' is not one of {', '.join(names)}")
    if ds.source == "jsonl":
        if ds.columns:
            raise ConfigError(f"{where}.columns: only for source webdataset or hf (JSONL keys are the fields)")
        return
    require(["webdataset" if ds.source == "webdataset" else "datasets"], f"{where}.source: {ds.source}")
    if ds.columns is not None and (not isinstance(ds.columns, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in ds.columns.items())):
        raise ConfigError(f"{where}.columns: must map field names to column names, got {ds.columns!r}")
    if ds.bucket:
        raise ConfigError(f"{where}.bucket: length bucketing needs every length up front; not with source "
                          f"{ds.source}")
    if ds.shuffle_buffer < 0:
        raise ConfigError(f"{where}.shuffle_buffer: must be >= 0, got {ds.shuffle_buffer}")
    if ds.max_train_samples:
        raise ConfigError(f"{where}.max_train_samples: not with source {ds.source} (a stream has no length up "
                          "front); write a smaller set of shards / files instead")


def _resolve_data(base: Path, value: str, source: str) -> str:
    """A data path relative to ``base``; remote shard URLs and hub dataset names (no such local path) stay."""
    if source == "webdataset" and value.startswith(("pipe:", "http://", "https://", "s3://", "gs://")):
        return value
    if source == "hf" and not value.startswith(("./", "../", "/", "~")) and not (base / value).exists():
        return value  # a hub dataset name such as "user/name"
    if source == "webdataset":  # keep "::" lists and brace patterns: resolve each part's directory
        return "::".join(_resolve(base, part) for part in value.split("::"))
    return _resolve(base, value)


def _resolve_local(base: Path, value: str | None) -> str | None:
    """Model / tokenizer names: paths that start with ./ or ../ are relative to ``base``; hub ids stay."""
    return _resolve(base, value) if value and value.startswith(("./", "../")) else value
