"""Spoken digits (FSDD): Whisper tiny.en encoder + projector + SmolLM2, against Whisper tiny.en itself.

Split: FSDD's own convention, indices 0-4 of each digit and speaker are the test set (250 clips), 5-49 the
training set (2,250). References are digit words ("seven").

Rows (``--parts``, comma-separated):

* ``whisper``: the off-the-shelf peer, ``WhisperForConditionalGeneration`` (openai/whisper-tiny.en, its
  standard 30 s window), greedy ``generate``, zero-shot on the test split.
* ``pretrained``: ``mmtransfer/recipes/asr-fsdd.yaml``: frozen Whisper tiny.en encoder cut to a 3 s window,
  frame stacking k=4, SmolLM2-135M-Instruct pretrained + LoRA r=8 (projector and LoRA train).
* ``scratch``: the same at the same step budget with a randomly initialised SmolLM2 (architecture from
  its config) trained in full (LoRA on random weights would be a straw man).
* ``tenth`` / ``scratch_tenth``: the pretrained / scratch recipe on a tenth of the training clips (every
  10th: 225), same steps: how much data each decoder needs.
* ``connected``: 2-4 digits of one speaker concatenated (50 ms gaps) into one utterance, transcribed as a
  digit-word string ("three one four"); train utterances from train clips, test from test clips. The
  Whisper peer and the pretrained recipe on it.

Scoring: WER after one normaliser for every system (``normalise``): lowercase, punctuation to spaces,
every digit character spelt as its word ("7" -> "seven", "314" -> "three one four"), whitespace collapsed.
No other rewriting (homophones such as "for"/"four" or "to"/"two" count as errors).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/asr_fsdd.py --out outputs/bench/asr_fsdd/results.json
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CONFIGS,
    Results,
    base_parser,
    link_data,
    require,
    run_recipe,
    setup,
    timed,
    write_jsonl,
)

SCRATCH = ["model.decoder.pretrained=false", "model.trainable.decoder=full", "optim.lr=3.0e-4"]
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def normalise(text: str) -> str:
    """Lowercase, punctuation -> space, each digit character -> its word, whitespace collapsed."""
    text = text.lower()
    text = re.sub(r"\d", lambda m: f" {WORDS[int(m.group())]} ", text)
    text = re.sub(r"[^\w\s']|_", " ", text)
    return " ".join(text.split())


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    from mmtransfer.metrics import cer, wer

    p, r = [normalise(x) for x in predictions], [normalise(x) for x in references]
    return {"wer": wer(p, r), "cer": cer(p, r), "sentence_acc": sum(a == b for a, b in zip(p, r)) / len(r)}


def fsdd_split(recordings: Path) -> dict[str, list[tuple[str, str, str]]]:
    """split -> [(file name, speaker, digit word)]."""
    out: dict[str, list[tuple[str, str, str]]] = {"train": [], "test": []}
    for f in sorted(recordings.glob("*.wav")):
        digit, speaker, index = f.stem.split("_")
        out["test" if int(index) < 5 else "train"].append((f.name, speaker, WORDS[int(digit)]))
    return out


def write_connected(work: Path, recordings: Path, split: list[tuple[str, str, str]], name: str, n: int,
                    seed: int, max_seconds: float = 2.9) -> Path:
    """``n`` utterances of 2-4 digits of one speaker (50 ms of silence between clips), as 8 kHz WAVs."""
    import numpy as np
    import soundfile as sf

    rng = random.Random(seed)
    by_speaker: dict[str, list[tuple[str, str]]] = {}
    for fname, speaker, word in split:
        by_speaker.setdefault(speaker, []).append((fname, word))
    folder = work / "connected"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    while len(rows) < n:
        speaker = rng.choice(sorted(by_speaker))
        picks = [rng.choice(by_speaker[speaker]) for _ in range(rng.randint(2, 4))]
        waves = []
        for fname, _ in picks:
            wave, rate = sf.read(recordings / fname, dtype="float32")
            waves += [wave, np.zeros(int(0.05 * rate), dtype=np.float32)]
        audio = np.concatenate(waves[:-1])
        if len(audio) / rate > max_seconds:
            continue
        path = folder / f"{name}_{len(rows):05d}.wav"
        sf.write(path, audio, rate)
        rows.append({"audio": f"connected/{path.name}", "text": " ".join(w for _, w in picks)})
    return write_jsonl(work / f"connected_{name}.jsonl", rows)


def read_rows(manifest: Path) -> list[dict[str, str]]:
    import json

    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def whisper_zero_shot(manifest: Path, batch_size: int = 16, max_new_tokens: int = 24,
                      name: str = "openai/whisper-tiny.en") -> tuple[list[str], list[str], float]:
    """Whisper's own greedy transcripts (30 s window, as released; English); (predictions, refs, wall s)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from mmtransfer import weights
    from mmtransfer.io import load_audio

    path = weights.resolve(name)
    proc = WhisperProcessor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    rows = read_rows(manifest)
    preds: list[str] = []
    with timed() as t, torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            waves = [load_audio(str(manifest.parent / r["audio"]), 16000) for r in chunk]
            feats = proc.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
            english = {"language": "en", "task": "transcribe"} if model.generation_config.is_multilingual else {}
            out = model.generate(feats, max_new_tokens=max_new_tokens, **english)
            preds += proc.batch_decode(out, skip_special_tokens=True)
    return preds, [r["text"] for r in rows], t["s"]


def ours(model_dir: Path, manifest: Path, max_new_tokens: int, **gen_kwargs: Any) -> tuple[list[str], list[str], float]:
    """A trained model's transcripts of a manifest (greedy, or ``gen_kwargs``: ``transcribe``'s decoding options);
    (predictions, refs, wall s)."""
    import torch

    import mmtransfer
    from mmtransfer.data import TaskDataset, read_manifest
    from mmtransfer.tasks import get_task

    model = mmtransfer.load(str(model_dir)).eval()
    task = get_task("asr")
    samples = list(read_manifest(str(manifest), task))
    dataset = TaskDataset(samples, task, sample_rate=model.encoders["audio"].sample_rate)
    items = [dataset[i] for i in range(len(dataset))]
    with timed() as t, torch.inference_mode():
        preds = task.predict(model, items, 32, max_new_tokens=max_new_tokens, **gen_kwargs)
    return preds, [s["text"] for s in samples], t["s"]


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "asr_fsdd")
    p.add_argument("--parts", default="whisper,pretrained,scratch,tenth,scratch_tenth,connected")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--connected-steps", type=int, default=150)
    p.add_argument("--connected-train", type=int, default=1500)
    p.add_argument("--connected-test", type=int, default=200)
    args = p.parse_args()
    setup(args)
    recordings = require(Path(args.data) / "fsdd" / "recordings", "FSDD recordings")
    work = Path(args.work)
    link_data(work, "fsdd", recordings)
    split = fsdd_split(recordings)
    for name, rows in split.items():
        write_jsonl(work / f"{name}.jsonl", ({"audio": f"fsdd/{f}", "text": w} for f, _, w in rows))
    parts = set(args.parts.split(","))
    res = Results("asr_fsdd", args.out)
    task = "FSDD test (250 clips, isolated digits)"
    test = work / "test.jsonl"

    peer = ""
    if "whisper" in parts:
        preds, refs, secs = whisper_zero_shot(test)
        m = score(preds, refs)
        peer = f"Whisper tiny.en zero-shot: WER {m['wer']:.3f}"
        res.add(task, "Whisper tiny.en zero-shot (30 s window, greedy)", 0, None, "WER", m["wer"],
                cer=round(m["cer"], 4), eval_s=round(secs, 1), examples=list(zip(refs[:5], preds[:5])))

    def trained(name: str, method: str, train: Path, test_m: Path, steps: int, task_name: str, peer_s: str,
                extra: list[str], max_new: int) -> None:
        out = work / "runs" / name
        overrides = [f"data.0.train={train}", "data.0.eval=null", f"output_dir={out}",
                     f"stages.0.steps={steps}", f"feature_cache={work.parent / 'feature_cache'}",
                     f"max_new_tokens={max_new}", *extra]
        _, secs = run_recipe(CONFIGS / "asr-fsdd.yaml", overrides)
        preds, refs, eval_s = ours(out / "final", test_m, max_new)
        m = score(preds, refs)
        res.add(task_name, method, f"{len(read_rows(train))} utts x {steps} steps (bs 16)", secs, "WER", m["wer"],
                peer_s, cer=round(m["cer"], 4), sentence_acc=round(m["sentence_acc"], 4), eval_s=round(eval_s, 1),
                examples=list(zip(refs[:5], preds[:5])))

    if "pretrained" in parts:
        trained("pretrained", "Whisper-tiny.en enc (frozen, 3 s) + frame-stack k=4 + SmolLM2 pretrained, LoRA r=8",
                work / "train.jsonl", test, args.steps, task, peer, [], 8)
    if "scratch" in parts:
        trained("scratch", "same, SmolLM2 architecture random-init, decoder fully trained (lr 3e-4)",
                work / "train.jsonl", test, args.steps, task, peer,
                SCRATCH, 8)
    tenth = write_jsonl(work / "train_tenth.jsonl", read_rows(work / "train.jsonl")[::10])
    if "tenth" in parts:
        trained("tenth", "Whisper-tiny.en enc (frozen, 3 s) + frame-stack k=4 + SmolLM2 pretrained, LoRA r=8, "
                "a tenth of the data", tenth, test, args.steps, task, peer, [], 8)
    if "scratch_tenth" in parts:
        trained("scratch_tenth", "same, SmolLM2 architecture random-init, decoder fully trained, a tenth of the data",
                tenth, test, args.steps, task, peer, SCRATCH, 8)
    if "connected" in parts:
        ctask = f"FSDD connected digits (2-4 digits, {args.connected_test} test utts)"
        ctrain = write_connected(work, recordings, split["train"], "train", args.connected_train, seed=0)
        ctest = write_connected(work, recordings, split["test"], "test", args.connected_test, seed=1)
        preds, refs, secs = whisper_zero_shot(ctest)
        m = score(preds, refs)
        cpeer = f"Whisper tiny.en zero-shot: WER {m['wer']:.3f}"
        res.add(ctask, "Whisper tiny.en zero-shot (30 s window, greedy)", 0, None, "WER", m["wer"],
                cer=round(m["cer"], 4), eval_s=round(secs, 1), examples=list(zip(refs[:5], preds[:5])))
        trained("connected", "Whisper-tiny.en enc (frozen, 3 s) + frame-stack k=4 + SmolLM2 pretrained, LoRA r=8",
                ctrain, ctest, args.connected_steps, ctask, cpeer, [], 16)
    res.finish()


if __name__ == "__main__":
    main()
