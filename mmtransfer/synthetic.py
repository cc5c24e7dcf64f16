"""Deterministic synthetic data sets (by seed) for tiny recipes, tests and compositional benchmarks.

- ``shapes``: scenes of 1-3 identical shapes of one colour on one side of the canvas, with a caption
  ("two red circles on the left") and question/answer pairs (colour, shape, count, side). Some
  colour-shape pairs appear only in the test split, to measure compositional generalisation.
- ``tones``: DTMF key tones for 1-4 digits (16 kHz WAV) transcribed as digit words: a small ASR task
  that needs no recorded speech.
- ``sentiment``: template sentences with a positive or negative word, labelled as such.
- conversations (``chat_*.jsonl``, OpenAI-style messages over the images and clips above): ``compare`` (two
  images, "which image has more shapes?"), ``dialogue`` (two turns about one scene: colour, then count) and
  ``mixed`` (those, a clip, an image with a clip, and text-only turns, for tests of mixed batches).

``write_all(out_dir)`` writes JSONL manifests in the formats ``mmtransfer.data`` reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELD_OUT = {("blue", "triangle"), ("yellow", "circle"), ("green", "square")}  # test-only combinations
DTMF = {  # (low, high) Hz of each key
    0: (941, 1336), 1: (697, 1209), 2: (697, 1336), 3: (697, 1477), 4: (770, 1209),
    5: (770, 1336), 6: (770, 1477), 7: (852, 1209), 8: (852, 1336), 9: (852, 1477),
}


def draw_scene(colour: str, shape: str, count: int, side: str, size: int, rng: random.Random) -> Image.Image:
    """``count`` shapes in the ``side`` half of a white ``size`` x ``size`` canvas, jittered by ``rng``."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    r = size // 10
    x0 = size // 4 if side == "left" else 3 * size // 4
    for i in range(count):
        cx = x0 + rng.randint(-size // 16, size // 16)
        cy = (i + 1) * size // (count + 1) + rng.randint(-size // 32, size // 32)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def caption(colour: str, shape: str, count: int, side: str) -> str:
    noun = shape + ("s" if count > 1 else "")
    return f"{NUMBERS[count]} {colour} {noun} on the {side}"


def questions(colour: str, shape: str, count: int, side: str) -> list[tuple[str, str]]:
    return [
        ("what colour are the shapes?", colour),
        ("what shape is shown?", shape),
        ("how many shapes are there?", NUMBERS[count]),
        ("which side are the shapes on?", side),
    ]


def write_shapes(out_dir: Path, n_train: int = 400, n_test: int = 60, size: int = 64, seed: int = 0) -> None:
    """``images/``, ``captions_{train,test}.jsonl`` and ``vqa_{train,test}.jsonl`` under ``out_dir``."""
    rng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        caps, vqa = [], []
        for i in range(n):
            while True:
                colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
                if ((colour, shape) in HELD_OUT) == (split == "test"):
                    break
            count, side = rng.randint(1, 3), rng.choice(SIDES)
            name = f"images/{split}_{i:05d}.png"
            draw_scene(colour, shape, count, side, size, rng).save(out_dir / name)
            caps.append({"image": name, "text": caption(colour, shape, count, side)})
            vqa += [{"image": name, "question": q, "answer": a} for q, a in questions(colour, shape, count, side)]
        _write_jsonl(out_dir / f"captions_{split}.jsonl", caps)
        _write_jsonl(out_dir / f"vqa_{split}.jsonl", vqa)


def dtmf(digits: list[int], rate: int, rng: random.Random) -> np.ndarray:
    """Key tones of ``digits`` (120 ms each, 60 ms gaps) with a little noise: float32 [T]."""
    t = np.arange(int(0.12 * rate)) / rate
    gap = np.zeros(int(0.06 * rate))
    parts = [gap]
    for d in digits:
        lo, hi = DTMF[d]
        parts += [0.4 * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t)), gap]
    wave = np.concatenate(parts)
    noise = np.random.default_rng(rng.randrange(2**31)).standard_normal(wave.shape) * 0.02
    return (wave + noise).astype(np.float32)


def write_tones(out_dir: Path, n_train: int = 400, n_test: int = 60, rate: int = 16000, seed: int = 0) -> None:
    """``audio/`` and ``asr_{train,test}.jsonl``: each clip's text is its digits as words."""
    rng = random.Random(seed)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            digits = [rng.randrange(10) for _ in range(rng.randint(1, 4))]
            name = f"audio/{split}_{i:05d}.wav"
            sf.write(out_dir / name, dtmf(digits, rate, rng), rate, subtype="PCM_16")
            rows.append({"audio": name, "text": " ".join(NUMBERS[d] for d in digits)})
        _write_jsonl(out_dir / f"asr_{split}.jsonl", rows)


POSITIVE = ("great", "wonderful", "delightful", "moving", "brilliant", "charming")
NEGATIVE = ("terrible", "boring", "awful", "dull", "clumsy", "tedious")
SUBJECTS = ("the film", "this movie", "the plot", "the acting", "the ending", "the story")


def write_sentiment(out_dir: Path, n_train: int = 400, n_test: int = 100, seed: int = 0) -> None:
    """``sentiment_{train,test}.jsonl``: "{subject} was {adjective}" labelled positive / negative."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for _ in range(n):
            label = rng.choice(("positive", "negative"))
            word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
            rows.append({"text": f"{rng.choice(SUBJECTS)} was {word}", "label": label})
        _write_jsonl(out_dir / f"sentiment_{split}.jsonl", rows)


def user_message(*content: dict | str) -> dict:
    """A user turn of parts; strings become text parts."""
    return {"role": "user", "content": [{"type": "text", "text": c} if isinstance(c, str) else c for c in content]}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": text}


def scene_of(row: dict) -> dict:
    """A captions-manifest row -> its image part and the scene ("two red circles on the left")."""
    count, colour, noun, *_, side = row["text"].split()
    return {"image": {"type": "image", "image": f"shapes/{row['image']}"}, "count": NUMBERS.index(count),
            "colour": colour, "shape": noun.rstrip("s"), "side": side}


def compare_conversation(a: dict, b: dict) -> dict:
    """Two scenes with different counts: which image has more shapes?"""
    answer = "the first" if a["count"] > b["count"] else "the second"
    question = user_message(a["image"], b["image"], "which image has more shapes?")
    return {"messages": [question, assistant_message(answer)]}


def dialogue_conversation(scene: dict) -> dict:
    """Two turns about one scene: its colour, then (depending on the first answer) its count."""
    return {"messages": [user_message(scene["image"], "what colour are the shapes?"),
                         assistant_message(scene["colour"]),
                         user_message("and how many are there?"), assistant_message(NUMBERS[scene["count"]])]}


def write_conversations(out: Path, seed: int = 0) -> None:
    """``chat_{compare,dialogue,mixed}_{train,test}.jsonl`` in ``out`` over the shapes and tones already there."""
    rng = random.Random(seed)
    for split in ("train", "test"):
        scenes = [scene_of(json.loads(line)) for line in (out / f"shapes/captions_{split}.jsonl").open()]
        clips = [json.loads(line) for line in (out / f"tones/asr_{split}.jsonl").open()]
        texts = [json.loads(line) for line in (out / f"sentiment/sentiment_{split}.jsonl").open()]
        pairs = [(a, b) for a, b in zip(scenes, scenes[1:] + scenes[:1]) if a["count"] != b["count"]]
        compare = [compare_conversation(a, b) for a, b in pairs]
        dialogue = [dialogue_conversation(s) for s in scenes]
        mixed = []
        for i, clip in enumerate(clips):
            audio = {"type": "audio", "audio": f"tones/{clip['audio']}"}
            scene, text = scenes[i % len(scenes)], texts[i % len(texts)]
            options = [
                dialogue[i % len(dialogue)],
                {"messages": [user_message(audio, "which digits are played?"), assistant_message(clip["text"])]},
                {"messages": [user_message(scene["image"], audio, "colour, then digits?"),
                              assistant_message(f"{scene['colour']}; {clip['text']}")]},
                {"messages": [user_message(f"{text['text']}. positive or negative?"),
                              assistant_message(text["label"])]},
            ]
            mixed.append(rng.choice(options + compare[i % max(len(compare), 1) :][:1]))  # a tiny split may have none
        for name, rows in (("compare", compare), ("dialogue", dialogue), ("mixed", mixed)):
            _write_jsonl(out / f"chat_{name}_{split}.jsonl", rows)


def write_all(out_dir: str | Path, n_train: int = 400, n_test: int = 60, seed: int = 0) -> Path:
    """Write every synthetic set under ``out_dir`` (a few seconds)."""
    out = Path(out_dir)
    write_shapes(out / "shapes", n_train, n_test, seed=seed)
    write_tones(out / "tones", n_train, n_test, seed=seed)
    write_sentiment(out / "sentiment", n_train, n_test, seed=seed)
    write_conversations(out, seed=seed)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
