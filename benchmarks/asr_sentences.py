"""Spoken English sentences: where the language model matters. Ours against Whisper tiny.en, and a
pretrained decoder against a randomly initialised one at full and at a tenth of the data.

Data, made on this machine: real English sentences (SST-2 training sentences of 5-15 words that start with a
letter, without digits or bracket tokens, detokenised: "it 's" -> "it's") spoken by espeak-ng at 16 kHz over
many voices, rates (140-190 words/min) and pitches (25-75). A voice is an accent and a variant. Training uses 5
accents x 8 variants; the test set uses 3 other accents x 5 other variants, so no test voice, accent or variant
is heard in training. Train and test sentences differ. Clips over 8 s are dropped (the encoder's window).

espeak-ng is a system package; this script installs nothing: without it, it says how and exits 0
(Debian / Ubuntu: ``apt-get install espeak-ng``).

Rows (``--parts``, comma-separated), one run:

* ``whisper``: ``WhisperForConditionalGeneration`` (openai/whisper-tiny.en, 30 s window, greedy), zero-shot.
* ``pretrained`` / ``tenth``: ``mmtransfer/recipes/asr-sentences.yaml`` (frozen Whisper tiny.en encoder with
  an 8 s window, frame stacking k=8 with the output at the embedding RMS, ``--ctc-steps`` of CTC alignment, then
  ``--steps`` of SmolLM2-135M-Instruct + LoRA r=16, batch 8) on all training utterances / on every 10th. The first
  of these rows also fills the encoder's feature cache (its time includes that).
* ``scratch`` / ``scratch_tenth``: the same architecture with a randomly initialised SmolLM2 (its config),
  decoder fully trained after the same CTC stage, same steps.

Scoring: WER after one normaliser for every system (``asr_fsdd.normalise``: lowercase, punctuation to
spaces except apostrophes, digits spelt out, whitespace collapsed).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/asr_sentences.py --out outputs/bench/asr_sentences.json
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asr_fsdd import SCRATCH, ours, read_rows, score, whisper_zero_shot
from common import CONFIGS, Results, base_parser, require, run_dir, run_recipe, setup, write_jsonl

TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-029")
TEST_ACCENTS = ("en-us-nyc", "en-gb-x-rp", "en-gb-x-gbcwmd")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3")
TEST_VARIANTS = ("m6", "m7", "m8", "f4", "f5")
MAX_SECONDS = 8.0
RATE = 16000


def detokenise(text: str) -> str:
    """SST-2's tokenised text as written English: "does n't" -> "doesn't", " , " -> ", "."""
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    text = re.sub(r" ([,.;:!?])", r"\1", text)
    return " ".join(text.split())


def sentences(sst2_train: Path, n: int, seed: int) -> list[str]:
    """``n`` distinct SST-2 training sentences of 5-15 words without digits or bracket/quote tokens, shuffled."""
    seen, out = set(), []
    for line in sst2_train.read_text().splitlines()[1:]:
        text = line.split("\t", 1)[-1]  # label, sentence
        text = detokenise(text)
        if (not 5 <= len(text.split()) <= 15 or not text[0].isalpha() or text in seen
                or re.search(r"\d|-lrb-|-rrb-|`|''|--", text)):
            continue
        seen.add(text)
        out.append(text)
    random.Random(seed).shuffle(out)
    if len(out) < n:
        raise SystemExit(f"{sst2_train}: only {len(out)} usable sentences, {n} asked for")
    return out[:n]


def speak(text: str, voice: str, wpm: int, pitch: int, path: Path) -> float:
    """Synthesise ``text`` with espeak-ng into a 16 kHz mono WAV at ``path``; its length in seconds."""
    import soundfile as sf

    from mmtransfer.io import load_audio

    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", raw.name, text],
                       check=True, capture_output=True)
        wave = load_audio(raw.name, RATE)  # espeak-ng writes 22.05 kHz
    sf.write(path, wave, RATE)
    return len(wave) / RATE


def synthesise(work: Path, split: str, texts: list[str], accents: tuple[str, ...], variants: tuple[str, ...],
               seed: int) -> Path:
    """Speak every text in a random voice of ``accents`` x ``variants``; the manifest (clips over 8 s dropped)."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    folder = work / "audio" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(tqdm(texts, desc=f"espeak-ng {split}", unit="utt")):
        voice = f"{rng.choice(accents)}+{rng.choice(variants)}"
        path = folder / f"{i:05d}.wav"
        seconds = speak(text, voice, rng.randint(140, 190), rng.randint(25, 75), path)
        if seconds <= MAX_SECONDS:
            rows.append({"audio": f"audio/{split}/{path.name}", "text": text, "voice": voice})
        else:
            path.unlink()
    return write_jsonl(work / f"{split}.jsonl", rows)


def peer_transcripts(work: Path, test: Path) -> tuple[list[str], list[str], float]:
    """Whisper tiny.en's transcripts of ``test``, kept in ``work`` for reruns of the same test manifest
    (the peer's output does not change between runs, and it costs minutes on a CPU)."""
    import hashlib
    import json

    saved = work / "whisper_test.json"
    digest = hashlib.sha256(test.read_bytes()).hexdigest()
    if saved.exists() and json.loads(saved.read_text())["manifest_sha256"] == digest:
        kept = json.loads(saved.read_text())
        return kept["predictions"], kept["references"], kept["seconds"]
    preds, refs, secs = whisper_zero_shot(test, max_new_tokens=48)
    saved.write_text(json.dumps({"manifest_sha256": digest, "predictions": preds, "references": refs,
                                 "seconds": secs}))
    return preds, refs, secs


def main() -> None:
    p = base_parser(__doc__.split("\n")[0], "asr_sentences")
    p.add_argument("--parts", default="whisper,pretrained,tenth,scratch,scratch_tenth")
    p.add_argument("--train", type=int, default=3000, help="training utterances")
    p.add_argument("--test", type=int, default=300, help="test utterances")
    p.add_argument("--steps", type=int, default=300, help="LM steps of 8, after the CTC stage")
    p.add_argument("--ctc-steps", type=int, default=1000, help="CTC alignment steps of 8 (projector only)")
    args = p.parse_args()
    if shutil.which("espeak-ng") is None:
        print("skipped: espeak-ng is not installed (Debian / Ubuntu: apt-get install espeak-ng)")
        return
    setup(args)
    sst2 = require(Path(args.data) / "sst2" / "train.tsv", "SST-2 training sentences")
    work = Path(args.work)
    texts = sentences(sst2, args.train + args.test, seed=0)
    if not (work / "train.jsonl").exists() or len(read_rows(work / "train.jsonl")) > args.train:
        synthesise(work, "test", texts[args.train:], TEST_ACCENTS, TEST_VARIANTS, seed=2)
        synthesise(work, "train", texts[: args.train], TRAIN_ACCENTS, TRAIN_VARIANTS, seed=1)
    train, test = work / "train.jsonl", work / "test.jsonl"
    tenth = write_jsonl(work / "train_tenth.jsonl", read_rows(train)[::10])
    n_test = len(read_rows(test))
    task = f"spoken SST-2 sentences, unseen voices ({n_test} test utts)"
    res = Results("asr_sentences", args.out)
    parts = set(args.parts.split(","))

    peer = ""
    if "whisper" in parts:
        preds, refs, secs = peer_transcripts(work, test)
        m = score(preds, refs)
        peer = f"Whisper tiny.en zero-shot: WER {m['wer']:.3f}"
        res.add(task, "Whisper tiny.en zero-shot (30 s window, greedy)", 0, None, "WER", m["wer"],
                cer=round(m["cer"], 4), eval_s=round(secs, 1), examples=list(zip(refs[:5], preds[:5])))

    # SCRATCH's decoder trains from the first step; here only in the stage after the CTC stage
    scratch = [*(o for o in SCRATCH if not o.startswith("model.trainable")),
               "stages.1.trainable={audio_encoder: frozen, projectors: full, decoder: full}"]
    rows = {
        "pretrained": (train, [],
                       f"Whisper-tiny.en enc (frozen, 8 s) + frame-stack k=8, RMS norm; {args.ctc_steps} CTC steps, "
                       "then SmolLM2 pretrained, LoRA r=16"),
        "tenth": (tenth, [], "same, a tenth of the data"),
        "scratch": (train, scratch, "same, SmolLM2 architecture random-init, decoder fully trained (lr 3e-4)"),
        "scratch_tenth": (tenth, scratch, "same, random-init decoder, a tenth of the data"),
    }
    for name, (manifest, extra, method) in rows.items():
        if name not in parts:
            continue
        out = work / "runs" / name
        overrides = [f"data.0.train={manifest}", f"data.0.eval={test}", f"output_dir={out}",
                     f"stages.0.steps={args.ctc_steps}", f"stages.1.steps={args.steps}",
                     f"feature_cache={work.parent / 'feature_cache'}", *extra]
        last, secs = run_recipe(CONFIGS / "asr-sentences.yaml", overrides)  # its eval: WER and the media gain
        preds, refs, eval_s = ours(run_dir(CONFIGS / "asr-sentences.yaml", overrides) / "final", test, 40)
        m = score(preds, refs)
        res.add(task, method, f"{len(read_rows(manifest))} utts, {args.ctc_steps} CTC + {args.steps} LM steps (bs 8)",
                secs, "WER",
                m["wer"], peer, cer=round(m["cer"], 4), eval_s=round(eval_s, 1), metrics=last,
                eval_included_in_train_s=True,
                examples=list(zip(refs[:5], preds[:5])))
    res.finish()


if __name__ == "__main__":
    main()
