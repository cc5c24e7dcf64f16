"""Metrics and normalisers against hand-computed examples."""

from __future__ import annotations

import math

import pytest

from mmtransfer import metrics


def test_normalize_text() -> None:
    assert metrics.normalize_text("  Hello,   World! Don\u2019t-stop. ") == "hello world dont stop"
    assert metrics.normalize_text("\uff21 B") == "a b"  # NFKC: full-width A


def test_normalize_answer_follows_vqa_rules() -> None:
    assert metrics.normalize_answer("The two dogs.") == "2 dogs"
    assert metrics.normalize_answer("1,000") == "1000"
    assert metrics.normalize_answer("2.5 meters") == "2.5 meters"
    assert metrics.normalize_answer("Don't know") == metrics.normalize_answer("dont know") == "dont know"
    assert metrics.normalize_answer("black-and-white") == "black and white"
    assert metrics.normalize_answer("none") == "0"


def test_wer_and_cer() -> None:
    assert metrics.wer(["a x c"], ["a b c"]) == pytest.approx(1 / 3)
    # corpus level: 1 substitution + 1 deletion over 3 + 2 reference words
    assert metrics.wer(["a x c", "d"], ["a b c", "d e"]) == pytest.approx(2 / 5)
    assert metrics.wer(["Hello, world!"], ["hello world"]) == 0.0
    assert metrics.cer(["hallo"], ["hello"]) == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="empty after normalisation"):
        metrics.wer(["a"], ["..."])


def test_bleu4_brevity_penalty_and_multiple_references() -> None:
    # every n-gram matches, but 4 words against a closest reference of 8: BP = exp(1 - 8/4)
    assert metrics.bleu4(["a b c d"], [["a b c d e f g h"]]) == pytest.approx(math.exp(-1), abs=1e-6)
    assert metrics.bleu4(["a man rides a horse"], [["a dog", "A man rides a horse."]]) == pytest.approx(1, abs=1e-6)
    assert metrics.bleu4(["x y z w"], [["a b c d"]]) == pytest.approx(0, abs=1e-6)


def test_cider_d() -> None:
    # two images; each n-gram occurs in one image's references: idf = log(2) for all. Exact 2-word
    # matches: cosine 1 for 1- and 2-grams, 0 for 3- and 4-grams -> mean 0.5, x10 = 5
    assert metrics.cider_d(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx(5.0)
    assert metrics.cider_d(["a b", "x y"], [["a b"], ["c d"]]) == pytest.approx(2.5)


def test_vqa_accuracy() -> None:
    assert metrics.vqa_accuracy(["The dog."], [["dog"]]) == 1.0  # one answer: exact match
    assert metrics.vqa_accuracy(["yes"], [["yes", "no"]]) == 0.5
    # 10 answers, 3 match: leave-one-out mean of min(#others matching / 3, 1) = (3 * 2/3 + 7 * 1) / 10
    answers = ["2"] * 3 + ["3"] * 7
    assert metrics.vqa_accuracy(["two"], [answers]) == pytest.approx(0.9)
    assert metrics.vqa_accuracy(["3"], [answers]) == pytest.approx(1.0)
    assert metrics.vqa_accuracy(["4"], [answers]) == 0.0


def test_accuracy_and_macro_f1() -> None:
    assert metrics.accuracy(["a", "b", "a"], ["a", "a", "a"]) == pytest.approx(2 / 3)
    # class a: P 1/2, R 1 -> F1 2/3; class b: P 1, R 2/3 -> F1 0.8
    assert metrics.macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx((2 / 3 + 0.8) / 2)


def test_length_mismatch_and_empty_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1"):
        metrics.accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="nothing to score"):
        metrics.wer([], [])
