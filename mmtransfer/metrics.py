"""Evaluation metrics: thin wrappers over pycocoevalcap, jiwer and scikit-learn, plus the normalisers.

Every metric takes ``(predictions, references)`` and returns a corpus-level float. Text is normalised
the same way on both sides before scoring:

- ``normalize_text`` (captions, transcripts): Unicode NFKC, lowercase, apostrophes deleted ("don't" ->
  "dont"), every other punctuation or symbol character replaced by a space, whitespace collapsed. Numbers
  are left as written (no digit <-> word conversion). For captions this stands in for COCO's PTB
  tokenizer, which needs Java; scores can differ slightly from the official COCO server's.
- ``normalize_answer`` (VQA): as the official VQA evaluation does: lowercase, commas inside numbers
  dropped ("1,000" -> "1000"), periods kept only before a digit ("2.5"), other punctuation -> space,
  apostrophes deleted (which matches the official contraction map's effect: "dont" == "don't"),
  number words zero..ten -> digits, articles (a, an, the) removed.

The scorer libraries are optional extras (``pip install mmtransfer[metrics]``), imported on first use.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from mmtransfer.extras import require

APOSTROPHES = "'\u2019"
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}


def _punctuation_to_space(text: str, keep: str = "") -> str:
    """Delete apostrophes; replace other punctuation (P*) and symbol (S*) characters not in ``keep`` by spaces."""
    out = []
    for char in text:
        if char in APOSTROPHES:
            continue
        is_punct = unicodedata.category(char)[0] in "PS" and char not in keep
        out.append(" " if is_punct else char)
    return "".join(out)


def normalize_text(text: str) -> str:
    """Caption / transcript normaliser: NFKC, lowercase, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_punctuation_to_space(text).split())


def normalize_answer(text: str) -> str:
    """VQA answer normaliser (see the module docstring): "The two dogs." -> "2 dogs"."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = re.sub(r"\.(?!\d)", " ", text)
    words = _punctuation_to_space(text, keep=".").split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("nothing to score: no predictions")


def _coco_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's input format: {item: [normalised reference, ...]}, {item: [normalised prediction]}."""
    _check_lengths(predictions, references)
    gts = {i: [normalize_text(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [normalize_text(p)] for i, p in enumerate(predictions)}
    if any(not refs for refs in gts.values()):
        raise ValueError("every prediction needs at least one reference")
    return gts, res


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] as COCO computes it (pycocoevalcap ``Bleu``: "closest" reference length for
    the brevity penalty), over any number of references per prediction."""
    require(["pycocoevalcap"], "BLEU-4")
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _coco_inputs(predictions, references)
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D as COCO computes it (pycocoevalcap ``Cider``: clipped tf-idf n-gram similarity, Gaussian
    length penalty, sigma 6, x10). Corpus-level: idf comes from all references, so score the whole eval
    set at once (a single item scores 0). Papers report it x100 (e.g. 1.10 here = 110)."""
    require(["pycocoevalcap"], "CIDEr-D")
    from pycocoevalcap.cider.cider import Cider

    gts, res = _coco_inputs(predictions, references)
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def _vqa_score(prediction: str, answers: list[str]) -> float:
    """One question. Up to 3 answers: the fraction that match (1 answer: exact match). More: the official
    VQA accuracy, ``min(#matching / 3, 1)`` averaged over the leave-one-out subsets of the answers (with
    10 answers, exactly the VQA v2 evaluation)."""
    matches = [a == prediction for a in answers]
    if len(answers) <= 3:
        return sum(matches) / len(answers)
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(answers)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean VQA accuracy in [0, 1] after ``normalize_answer``; ``answers`` holds each question's human answers."""
    _check_lengths(predictions, answers)
    scores = [
        _vqa_score(normalize_answer(p), [normalize_answer(a) for a in refs])
        for p, refs in zip(predictions, answers)
    ]
    return sum(scores) / len(scores)


def _normalized_pairs(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    _check_lengths(predictions, references)
    refs = [normalize_text(r) for r in references]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"references {empty[:10]} are empty after normalisation: WER/CER is undefined for them")
    return [normalize_text(p) for p in predictions], refs


def wer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus word error rate (jiwer): total word edits / total reference words, after ``normalize_text``."""
    require(["jiwer"], "WER / CER")
    import jiwer

    preds, refs = _normalized_pairs(predictions, references)
    return float(jiwer.wer(reference=refs, hypothesis=preds))


def cer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus character error rate (jiwer) after ``normalize_text``; spaces count as characters."""
    require(["jiwer"], "WER / CER")
    import jiwer

    preds, refs = _normalized_pairs(predictions, references)
    return float(jiwer.cer(reference=refs, hypothesis=preds))


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of exact label matches (scikit-learn)."""
    require(["sklearn"], "accuracy")
    from sklearn.metrics import accuracy_score

    _check_lengths(predictions, references)
    return float(accuracy_score(list(references), list(predictions)))


def macro_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """F1 averaged over the classes that occur in the references or predictions (scikit-learn; a class
    never predicted correctly scores 0)."""
    require(["sklearn"], "macro F1")
    from sklearn.metrics import f1_score

    _check_lengths(predictions, references)
    return float(f1_score(list(references), list(predictions), average="macro", zero_division=0))
