"""DataLoader worker processes (``num_workers > 0``) change nothing but speed: the same batches, the same
skips counted, the same feature cache, the same resumed run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mmtransfer.bundled import RECIPES
from mmtransfer.synthetic import write_all
from mmtransfer.train import checkpoint, load_train_config, train
from tests.runs import interrupt_then_resume
from tests.test_train import _losses, _overrides

ASR = RECIPES / "asr-tiny.yaml"
CAPTIONS = RECIPES / "captioning-tiny.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = write_all(tmp_path_factory.mktemp("synthetic"), n_train=16, n_test=4)
    clip = data / "tones" / "audio" / "train_00000.wav"
    clip.write_bytes(clip.read_bytes()[:100])  # a valid header with 28 samples: too short, skipped at batching
    return data


def _run(recipe: Path, synthetic: Path, out: Path, workers: int, *extra: str) -> tuple[list, int]:
    args = _overrides(recipe, synthetic, out, 6) + [f"num_workers={workers}", "batch_size=4", "data.0.eval=null",
                                                    *extra]
    train(load_train_config(recipe, args))
    return _losses(out), checkpoint.read_state(out / "checkpoint")["data"]["skipped"]


def test_workers_give_the_same_losses_and_skip_counts(synthetic: Path, tmp_path: Path) -> None:
    alone, skipped_alone = _run(ASR, synthetic, tmp_path / "w0", 0)
    workers, skipped_workers = _run(ASR, synthetic, tmp_path / "w2", 2)
    assert workers == alone and len(alone) == 6
    assert skipped_workers == skipped_alone >= 1


@pytest.fixture
def one_thread() -> Iterator[None]:
    """DataLoader workers run torch on one thread; the main process matches them here, so that the frozen
    encoder's features are bit-identical wherever they are computed (with 2 threads a loaded machine may change
    the summation order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_workers_fill_and_read_the_feature_cache(synthetic: Path, tmp_path: Path) -> None:
    frozen = ["model.trainable.image_encoder=frozen", f"feature_cache={tmp_path / 'cache'}"]
    reference, _ = _run(CAPTIONS, synthetic, tmp_path / "plain", 0, "model.trainable.image_encoder=frozen")
    filled, _ = _run(CAPTIONS, synthetic, tmp_path / "fill", 2, *frozen)
    assert any((tmp_path / "cache").iterdir())  # the workers wrote it
    read, _ = _run(CAPTIONS, synthetic, tmp_path / "read", 2, *frozen)
    assert filled == reference and read == reference


def test_resume_with_workers_is_exact(synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full, _ = _run(ASR, synthetic, tmp_path / "full", 2, "save_every=3")
    cfg = load_train_config(ASR, _overrides(ASR, synthetic, tmp_path / "cut", 6)
                            + ["num_workers=2", "batch_size=4", "data.0.eval=null", "save_every=3"])
    interrupt_then_resume(cfg, monkeypatch, at_batch=5)
    assert dict(_losses(tmp_path / "cut")) == dict(full)
