"""Command line: ``mmtransfer caption|transcribe|answer|classify|demo|weights ...``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


def _inference_parser(sub: argparse._SubParsersAction, name: str, help_: str, inputs: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_)
    p.add_argument("checkpoint", help="a directory written by save_pretrained / training")
    p.add_argument(inputs, nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--device", default="cpu")
    return p


def _run_inference(args: argparse.Namespace) -> int:
    import mmtransfer

    model = mmtransfer.load(args.checkpoint, device=args.device)
    gen = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    if args.command == "caption":
        outs = model.caption(args.images, **gen)
        items = args.images
    elif args.command == "transcribe":
        outs = model.transcribe(args.audio, **gen)
        items = args.audio
    elif args.command == "answer":
        outs = model.answer([args.image] * len(args.questions), args.questions, **gen)
        items = args.questions
    else:
        outs = model.classify(args.texts)
        items = args.texts
    for item, out in zip(items, outs):
        print(f"{item}\t{out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmtransfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _inference_parser(sub, "caption", "caption images", "images")
    _inference_parser(sub, "transcribe", "transcribe audio files", "audio")
    answer = _inference_parser(sub, "answer", "answer questions about one image", "questions")
    answer.add_argument("--image", required=True)
    _inference_parser(sub, "classify", "label texts", "texts")
    demo = sub.add_parser("demo", help="build a tiny model offline, save, load, caption and transcribe the samples")
    demo.add_argument("--out", default="outputs/demo-model")
    from mmtransfer import cli_weights

    cli_weights.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "caption": _run_inference, "transcribe": _run_inference, "answer": _run_inference,
        "classify": _run_inference, "demo": _run_demo,
    }
    if args.command in handlers:
        return handlers[args.command](args)
    return args.func(args)


def _run_demo(args: argparse.Namespace) -> int:
    from mmtransfer.demo import run_demo

    run_demo(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
