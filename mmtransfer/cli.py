"""Command line: ``mmtransfer chat|caption|transcribe|answer|classify|train|eval|demo|weights|serve ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEBUG_ENV = "MMTRANSFER_DEBUG"


Run = Callable[[Any, argparse.Namespace, dict[str, Any]], tuple[list[str], list[str]]]  # -> (inputs, outputs)


def _inference_parser(sub: argparse._SubParsersAction, name: str, help_: str, inputs: str, run: Run,
                      generates: bool = True) -> argparse.ArgumentParser:
    r"""A task command that ``run``\ s one inference method; ``generates``: it writes text, so it takes generation
    options (classify scores labels)."""
    p = sub.add_parser(name, help=help_)
    p.add_argument("checkpoint", help="a directory written by save_pretrained / training")
    p.add_argument(inputs, nargs="+")
    if generates:
        p.add_argument("--max-new-tokens", type=int, default=32)
        p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.set_defaults(func=_run_inference, run=run, generates=generates)
    return p


def _run_inference(args: argparse.Namespace) -> int:
    import mmtransfer

    model = mmtransfer.load(args.checkpoint, device=args.device)
    gen = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams} if args.generates else {}
    for item, out in zip(*args.run(model, args, gen)):
        print(f"{item}\t{out}")
    return 0


def _caption(model: Any, args: argparse.Namespace, gen: dict[str, Any]) -> tuple[list[str], list[str]]:
    return args.images, model.caption(args.images, **gen)


def _transcribe(model: Any, args: argparse.Namespace, gen: dict[str, Any]) -> tuple[list[str], list[str]]:
    return args.audio, model.transcribe(args.audio, **gen)


def _answer(model: Any, args: argparse.Namespace, gen: dict[str, Any]) -> tuple[list[str], list[str]]:
    return args.questions, model.answer([args.image] * len(args.questions), args.questions, **gen)


def _classify(model: Any, args: argparse.Namespace, gen: dict[str, Any]) -> tuple[list[str], list[str]]:
    return args.texts, model.classify(args.texts)


def _run_chat(args: argparse.Namespace) -> int:
    import mmtransfer

    model = mmtransfer.load(args.checkpoint, device=args.device)
    media = [{"type": kind, kind: path} for kind in ("image", "audio", "video") for path in getattr(args, kind)]
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": [*media, {"type": "text", "text": args.text}]})
    print(model.chat(messages, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmtransfer", description="Multimodal transfer learning: train recipes, "
                                     "evaluate, chat, caption, transcribe, answer, classify, serve, export.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a config / data / input error (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="one user turn (text, any number of images / clips / videos) -> the reply")
    chat.set_defaults(func=_run_chat)
    chat.add_argument("checkpoint", help="a directory written by save_pretrained / training")
    chat.add_argument("text")
    for kind in ("image", "audio", "video"):
        chat.add_argument(f"--{kind}", action="append", default=[], metavar="PATH",
                          help=f"a{'n' if kind != 'video' else ''} {kind} file, placed before the text; repeatable")
    chat.add_argument("--system", default=None, help="a system message")
    chat.add_argument("--max-new-tokens", type=int, default=32)
    chat.add_argument("--num-beams", type=int, default=1)
    chat.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    _inference_parser(sub, "caption", "caption images", "images", _caption)
    _inference_parser(sub, "transcribe", "transcribe audio files", "audio", _transcribe)
    answer = _inference_parser(sub, "answer", "answer questions about one image", "questions", _answer)
    answer.add_argument("--image", required=True)
    _inference_parser(sub, "classify", "label texts (each label scored; no generation options)", "texts", _classify,
                      generates=False)
    train = sub.add_parser("train", help="train from a recipe YAML; key=value pairs override its fields")
    train.set_defaults(func=_run_train)
    train.add_argument("config", help="a recipe file, or a bundled recipe's name (see: mmtransfer recipes)")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoint")
    ev = sub.add_parser("eval", help="evaluate a saved model on a task's data (JSONL, conversations, shards, HF)")
    ev.set_defaults(func=_run_eval)
    ev.add_argument("checkpoint")
    ev.add_argument("--task", required=True, help="captioning | vqa | asr | classification | chat")
    ev.add_argument("--data", required=True, help="a JSONL manifest (chat: a messages JSONL, LLaVA or ShareGPT file); "
                    "with --source webdataset: shards; with --source hf: a dataset directory, Parquet files or a name")
    ev.add_argument("--source", default="jsonl", choices=("jsonl", "webdataset", "hf"),
                    help="how --data is read, as a recipe's data source")
    ev.add_argument("--split", default="validation", help="--source hf: the split to score")
    ev.add_argument("--format", default="auto", help="--task chat: messages | llava | sharegpt | auto")
    ev.add_argument("--media-root", default=None, help="the folder the data file's media paths resolve in "
                    "(default: the data file's own)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-new-tokens", type=int, default=32)
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    ev.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    ev.add_argument("--no-media-gain", action="store_true",
                    help="skip the second pass with each input blanked (the media gain; it doubles the cost)")
    make = sub.add_parser("make-data", help="write the synthetic data sets (shapes, tones, sentiment)")
    make.set_defaults(func=_run_make_data)
    make.add_argument("out_dir", nargs="?", default="data/synthetic")
    make.add_argument("--n-train", type=int, default=400)
    make.add_argument("--n-test", type=int, default=60)
    make.add_argument("--seed", type=int, default=0)
    shards = sub.add_parser("make-shards", help="write a JSONL manifest as WebDataset shards, Parquet files or a "
                                               "datasets save_to_disk directory (streaming sources)")
    shards.add_argument("manifest", help="a JSONL manifest or conversation file")
    shards.add_argument("out_dir")
    shards.add_argument("--task", required=True, help="the manifest's task: captioning, vqa, asr, classification, chat")
    shards.add_argument("--format", choices=("webdataset", "parquet", "hf-dir"), default="webdataset")
    shards.add_argument("--per-shard", type=int, default=1000, help="samples per tar / Parquet file")
    shards.set_defaults(func=_run_make_shards)
    recipes = sub.add_parser("recipes", help="list the bundled recipes (mmtransfer train NAME runs one)")
    recipes.set_defaults(func=_run_recipes)
    demo = sub.add_parser("demo", help="build a tiny model offline, save, load, caption and transcribe the samples")
    demo.set_defaults(func=_run_demo)
    demo.add_argument("--out", default="outputs/demo-model")
    export = sub.add_parser("export", help="write a model in another library's format (hf: transformers LLaVA)")
    export.add_argument("checkpoint", help="a directory written by save_pretrained / training")
    export.add_argument("out", help="the folder to write (replaced atomically; untouched when export is refused)")
    export.add_argument("--format", default="hf",
                        help="hf (the one so far): AutoModelForImageTextToText / AutoProcessor open it (LoRA merged)")
    export.set_defaults(func=_run_export)
    from mmtransfer import cli_weights

    cli_weights.add_parser(sub)
    _add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (``MMTransferError``: config, data, weights, input) prints one line,
    ``mmtransfer: error: <where>: <problem>``, and returns 2; ``--debug`` or ``MMTRANSFER_DEBUG=1`` shows
    its traceback. Any other exception is a bug and keeps its traceback."""
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is first imported: not yet, for speed
    if "transformers" in sys.modules:  # already imported (main called in-process): set it there
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    args = build_parser().parse_args(argv)
    from mmtransfer.errors import MMTransferError

    try:
        return args.func(args)  # every sub-command sets its handler (set_defaults(func=...))
    except MMTransferError as err:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"mmtransfer: error: {err}", file=sys.stderr)
        return 2


def _run_train(args: argparse.Namespace) -> int:
    from mmtransfer.errors import WeightsNotFoundError
    from mmtransfer.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # a recipe error stops here, before torch loads
    from mmtransfer import train as training  # its train() imports the loop (torch, Accelerate) on first use
    try:
        metrics = training.train(cfg, resume=args.resume)
    except WeightsNotFoundError as err:
        if not cfg.fallback:
            raise
        banner = "=" * 78
        print(f"{banner}\nPRETRAINED WEIGHTS MISSING: {err}\nFALLING BACK to {cfg.fallback}: tiny models with "
              f"random initialisation, trained from scratch.\n{banner}", file=sys.stderr)
        cfg = load_train_config(cfg.fallback)
        metrics = training.train(cfg, resume=args.resume)
    print(json.dumps(metrics, indent=2))
    print(f"model saved to {cfg.output_dir}/final (best: {cfg.output_dir}/best)")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    import mmtransfer
    from mmtransfer import media_gain
    from mmtransfer.errors import NoSamplesError
    from mmtransfer.extras import require
    from mmtransfer.tasks import get_task
    from mmtransfer.train.config import DatasetConfig, check_dataset
    from mmtransfer.train.data import eval_dataset

    task = get_task(args.task)
    require(task.scorers, f"evaluating {task.name}")
    ds = DatasetConfig(task=task.name, train=args.data, eval=args.data, source=args.source, format=args.format,
                       eval_split=args.split, media_root=args.media_root, max_eval_samples=args.limit)
    check_dataset(ds, "--data")
    model = mmtransfer.load(args.checkpoint, device=args.device)
    try:
        dataset = eval_dataset(ds, model)
    except NoSamplesError:
        raise NoSamplesError(f"{args.data}: no usable samples to evaluate (every sample was skipped: see the "
                             "messages above)") from None
    kwargs = task.generation_kwargs(args.max_new_tokens)
    metrics = media_gain.evaluate(model, task, dataset, args.batch_size, not args.no_media_gain, **kwargs)
    print(json.dumps(metrics, indent=2))
    for line in media_gain.warnings(metrics):
        print(line, file=sys.stderr)
    return 0


def _run_make_data(args: argparse.Namespace) -> int:
    from mmtransfer.synthetic import write_all

    out = write_all(args.out_dir, args.n_train, args.n_test, args.seed)
    print(f"wrote synthetic data sets under {out}")
    return 0


def _run_make_shards(args: argparse.Namespace) -> int:
    from mmtransfer.data import convert

    if args.format == "webdataset":
        written = convert.write_shards(args.manifest, args.task, args.out_dir, per_shard=args.per_shard)
    elif args.format == "parquet":
        written = convert.write_parquet(args.manifest, args.task, args.out_dir, per_file=args.per_shard)
    else:
        written = [convert.write_hf_dir(args.manifest, args.task, args.out_dir, paths=False)]
    print(f"wrote {len(written)} {args.format} file(s) under {args.out_dir}")
    return 0


def _run_recipes(args: argparse.Namespace) -> int:
    from mmtransfer.bundled import RECIPES, recipe_names, recipe_summary

    for name in recipe_names():
        print(f"{name:24s} {recipe_summary(RECIPES / f'{name}.yaml')}")
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat completions, a chat page at /)")
    serve.set_defaults(func=_run_serve)
    serve.add_argument("checkpoint", help="a directory written by save_pretrained / training")
    serve.add_argument("--host", default="127.0.0.1", help="the address to bind (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-name", default=None, help="the id clients send as 'model' (default: the "
                       "run's name for a run's final/ or best/, else the directory's name)")
    serve.add_argument("--max-batch", type=int, default=16, help="most requests in one generate call")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0,
                       help="a batch being formed waits this long for the next request to join it")
    serve.add_argument("--max-body-mb", type=float, default=20.0, help="larger request bodies get 413")
    serve.add_argument("--default-max-tokens", type=int, default=128, help="for requests without max_tokens")
    serve.add_argument("--media-dir", default=None, help="a directory image_url parts may name files in "
                       "(default: media must come inline, as base64)")
    serve.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")


def _served_name(checkpoint: Path) -> str:
    """A run's ``final/`` or ``best/`` is served as the run (``outputs/flickr8k/final`` -> ``flickr8k``)."""
    path = checkpoint.resolve()
    return path.parent.name if path.name in ("final", "best") else path.name


def _run_serve(args: argparse.Namespace) -> int:
    from mmtransfer.extras import require

    require(["fastapi", "uvicorn"], "mmtransfer serve")
    import mmtransfer
    from mmtransfer.serve import ServeSettings, run

    model = mmtransfer.load(args.checkpoint, device=args.device)
    settings = ServeSettings(
        model_name=args.model_name or _served_name(Path(args.checkpoint)), max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, max_body_mb=args.max_body_mb, default_max_tokens=args.default_max_tokens,
        media_dir=Path(args.media_dir) if args.media_dir else None,
    )
    run(model, settings, host=args.host, port=args.port)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from mmtransfer.demo import run_demo

    run_demo(args.out)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from mmtransfer.export import export

    out = export(args.checkpoint, args.out, format=args.format)
    config = json.loads((out / "config.json").read_text())
    print(f"exported {args.checkpoint} as {config['architectures'][0]} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
