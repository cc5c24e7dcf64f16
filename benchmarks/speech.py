"""Real read speech (speechocean762): our Whisper-encoder + SmolLM2 recipe against Whisper zero-shot and fine-tuned.

speechocean762's 2,500 training utterances are split by speaker: ``--dev-speakers`` of the 125 speakers (seeded)
form the dev split, so every dev voice is unseen. Parts (``--parts``), one run:

* ``whisper``: Whisper tiny.en and Whisper base zero-shot (their own decoders, 30 s window, greedy).
* ``ours``: ``mmtransfer/recipes/speechocean-asr.yaml``: ``--ctc-steps`` of CTC alignment (``objective: ctc``: the
  projector alone learns to put each spoken token's embedding at its frames, no decoder run), then ``--steps`` of
  LoRA; its eval also reports the media gain (the dev clips replaced by silence of the same length). Every trained
  row uses ``--encoder`` (default: the recipe's Whisper base; ``openai/whisper-tiny.en`` for the earlier rows);
  the recipe trains the encoder's last layer in the LoRA stage, ``--frozen-encoder`` keeps it frozen throughout.
* ``tenth``: ``ours`` trained on a tenth of the training speakers (every utterance of 11 of the 110), the same
  steps: data efficiency.
* ``noctc``: the same model with LoRA from the first step and no CTC stage (the recipe before CTC alignment).
* ``align``: a projector-only stage on the LM loss of ``--align-steps`` first (decoder frozen), within ``--steps``.
* ``before``: the ``asr-sentences`` recipe's design before any of the convergence changes (k=16, no output norm,
  no CTC).
* ``finetune``: Whisper tiny.en fine-tuned on the same training utterances (its own decoder, transformers
  seq2seq, the whole model at lr 1e-5 as in Hugging Face's Whisper fine-tuning guide), for the wall time our
  ``ours`` row trained (``--finetune-seconds`` when run alone).

* ``decode``: an ``ours`` run's saved model (``--decode-run``, default the ``ours`` row's folder) transcribed again
  with generate's options against repetition loops (``no_repeat_ngram_size`` 3, ``repetition_penalty`` 1.2), beside
  greedy decoding: no training.

WER after one normaliser for every system (``asr_fsdd.normalise``: lowercase, punctuation removed, digits spelt).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speech.py --out outputs/bench/speech/results.json
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asr_fsdd import ours as transcribe
from asr_fsdd import score, whisper_zero_shot
from common import CONFIGS, Results, base_parser, link_data, require, run_dir, run_recipe, setup, write_jsonl

LORA_FROZEN_ENCODER = "{audio_encoder: frozen, projectors: full, decoder: lora, lora: {r: 16, alpha: 32}}"
LORA = f"trainable: {LORA_FROZEN_ENCODER}"
FROZEN = "trainable: {audio_encoder: frozen, projectors: full, decoder: frozen}"


def recipe(ctc_steps: int, steps: int) -> list[str]:
    """The recipe as it is: ``ctc_steps`` of CTC alignment, then ``steps`` LoRA steps."""
    return [f"stages.0.steps={ctc_steps}", f"stages.1.steps={steps}"]


def no_ctc(steps: int) -> list[str]:
    """LoRA (and the projector) from the first step, no CTC stage: the recipe before CTC alignment."""
    return [f"stages=[{{name: train, steps: {steps}, {LORA}}}]"]


def align(align_steps: int, steps: int) -> list[str]:
    """A projector-only stage on the LM loss (decoder frozen), then LoRA, within ``steps`` in all."""
    return [f"stages=[{{name: align, steps: {align_steps}, {FROZEN}}}, "
            f"{{name: finetune, steps: {steps - align_steps}, {LORA}}}]"]


def before(steps: int) -> list[str]:
    """The design before the convergence changes (the old ``asr-sentences`` recipe): k=16, no output norm, no CTC,
    LoRA from the first step."""
    return ["model.audio_projector={name: frame_stack, k: 16}", *no_ctc(steps)]


def encoder_override(name: str, frozen: bool) -> list[str]:
    """The recipe's Whisper encoder swapped for ``name`` (its window and the rest of the recipe kept), and (``frozen``)
    kept frozen in the LoRA stage."""
    return [f"model.audio_encoder.model={name}", *([f"stages.1.trainable={LORA_FROZEN_ENCODER}"] if frozen else [])]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split_by_speaker(rows: list[dict], n_dev: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    speakers = sorted({r["speaker"] for r in rows})
    dev = set(random.Random(seed).sample(speakers, n_dev))
    return [r for r in rows if r["speaker"] not in dev], [r for r in rows if r["speaker"] in dev]


def finetune_whisper(train: list[dict], dev_manifest: Path, root: Path, seconds: float, batch: int = 8,
                     lr: float = 1e-5) -> tuple[list[str], int]:
    """Whisper tiny.en, every weight trained with AdamW at ``lr`` for ``seconds`` of wall time; (dev
    transcripts, steps taken)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from mmtransfer import weights
    from mmtransfer.io import load_audio

    path = weights.resolve("openai/whisper-tiny.en")
    proc = WhisperProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    model.train()
    t0, step = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = [train[order[(step * batch + k) % len(order)]] for k in range(batch)]
        waves = [load_audio(str(root / r["audio"]), 16000) for r in chunk]
        feats = proc.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
        labels = proc.tokenizer([" " + r["text"] for r in chunk], return_tensors="pt", padding=True)
        ids = labels.input_ids.masked_fill(labels.attention_mask == 0, -100)
        if (ids[:, 0] == model.config.decoder_start_token_id).all():  # the model prepends it itself
            ids = ids[:, 1:]
        loss = model(input_features=feats, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0:
            print(f"whisper fine-tune step {step} ({time.perf_counter() - t0:.0f} s): loss {loss.item():.3f}",
                  flush=True)
        step += 1
    model.eval()
    tmp = dev_manifest.parent / "runs" / "whisper_finetuned"
    model.save_pretrained(tmp)
    proc.save_pretrained(tmp)
    preds, _, _ = whisper_zero_shot(dev_manifest, max_new_tokens=48, name=str(tmp))
    return preds, step


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "speech")
    p.add_argument("--parts", default="whisper,ours,noctc,finetune")
    p.add_argument("--steps", type=int, default=400, help="LM training steps of 8 utterances (every trained row)")
    p.add_argument("--align-steps", type=int, default=50, help="the align row's projector-only steps, of --steps")
    p.add_argument("--ctc-steps", type=int, default=1000, help="ours: CTC alignment steps of 8, before --steps")
    p.add_argument("--dev-speakers", type=int, default=15)
    p.add_argument("--finetune-seconds", type=float, default=None)
    p.add_argument("--decode-run", default=None, help="decode: a saved run folder (default: the ours row's)")
    p.add_argument("--encoder", default="openai/whisper-base",
                   help="the trained rows' Whisper encoder (the recipe's: openai/whisper-base)")
    p.add_argument("--frozen-encoder", action="store_true",
                   help="keep the encoder frozen in the LoRA stage too (the recipe trains its last layer there)")
    args = p.parse_args()
    setup(args)
    src = require(Path(args.data) / "speechocean762", "speechocean762")
    work = Path(args.work)
    link_data(work, "audio", src / "audio")
    train, dev = split_by_speaker(read_rows(src / "train.jsonl"), args.dev_speakers)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "dev.jsonl", dev)
    tenth, _ = split_by_speaker(train, len({r["speaker"] for r in train}) * 9 // 10, seed=1)
    write_jsonl(work / "train_tenth.jsonl", tenth)
    dev_m = work / "dev.jsonl"
    refs = [r["text"] for r in dev]
    task = f"speechocean762 dev ({len(dev)} utterances, {args.dev_speakers} unseen speakers)"
    def size(rows: list[dict]) -> str:
        return f"{len(rows)} utterances, {args.steps} LM steps (bs 8)"

    parts = args.parts.split(",")
    res = Results("speech", args.out)
    if "whisper" in parts:
        for name in ("openai/whisper-tiny.en", "openai/whisper-base"):
            preds, _, secs = whisper_zero_shot(dev_m, max_new_tokens=48, name=name)
            s = score(preds, refs)
            res.add(task, f"{name.split('/')[1]} zero-shot", 0, None, "WER", s["wer"], "", cer=round(s["cer"], 4),
                    eval_s=round(secs, 1), examples=list(zip(refs[:5], preds[:5])))
    trained_s = args.finetune_seconds
    for part, extra, method in (
        ("ours", recipe(args.ctc_steps, args.steps),
         f"{args.encoder.rsplit('/', 1)[-1]} encoder ({'frozen' if args.frozen_encoder else 'last layer trained'})"
         f" + k=8 + RMS-normed projector: {args.ctc_steps} CTC alignment steps, then SmolLM2 LoRA r=16"),
        ("tenth", recipe(args.ctc_steps, args.steps), f"same, on a tenth of the training speakers ({len(tenth)} "
         "utterances)"),
        ("noctc", no_ctc(args.steps), "same without the CTC stage (LoRA from the first step)"),
        ("align", align(args.align_steps, args.steps), f"same, a {args.align_steps}-step projector-only LM stage "
         "instead of CTC"),
        ("before", before(args.steps), "before the convergence changes: k=16, no norm, no CTC"),
    ):
        if part not in parts:
            continue
        config = CONFIGS / "speechocean-asr.yaml"
        rows = tenth if part == "tenth" else train
        overrides = [f"data.0.train={work / ('train_tenth.jsonl' if part == 'tenth' else 'train.jsonl')}",
                     f"data.0.eval={dev_m}",
                     f"output_dir={work / 'runs' / part}", f"feature_cache={work.parent / 'feature_cache'}",
                     *encoder_override(args.encoder, args.frozen_encoder), *extra]
        last, secs = run_recipe(config, overrides)
        preds, _, _ = transcribe(run_dir(config, overrides) / "final", dev_m, 32)
        s = score(preds, refs)
        res.add(task, method, size(rows), secs, "WER", s["wer"], "see the Whisper rows", cer=round(s["cer"], 4),
                metrics=last, examples=list(zip(refs[:5], preds[:5])), eval_included_in_train_s=True,
                encoder=args.encoder)
        trained_s = trained_s or secs
    if "decode" in parts:
        model_dir = Path(args.decode_run or run_dir(CONFIGS / "speechocean-asr.yaml",
                                                    [f"output_dir={work / 'runs' / 'ours'}"])) / "final"
        for label, options in (("greedy", {}), ("no_repeat_ngram_size 3", {"no_repeat_ngram_size": 3}),
                               ("repetition_penalty 1.2", {"repetition_penalty": 1.2})):
            preds, _, secs = transcribe(model_dir, dev_m, 32, **options)
            s = score(preds, refs)
            res.add(task, f"{model_dir.parent.name}, decoded with {label}", size(train), None, "WER", s["wer"], "",
                    cer=round(s["cer"], 4), eval_s=round(secs, 1), examples=list(zip(refs[:5], preds[:5])))
    if "finetune" in parts:
        budget = trained_s or 900.0
        preds, n = finetune_whisper(train, dev_m, work, budget)
        s = score(preds, refs)
        res.add(task, f"Whisper tiny.en fine-tuned (whole model, lr 1e-5, {n} steps of 8)", len(train), budget,
                "WER", s["wer"], "", cer=round(s["cer"], 4), examples=list(zip(refs[:5], preds[:5])))
    res.finish()


if __name__ == "__main__":
    main()
