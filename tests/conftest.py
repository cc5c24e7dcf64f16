"""Shared fixtures: tiny models built from configs (2 layers, width 32), offline and deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

import mmtransfer  # noqa: E402
from tests.tiny_models import tiny_model_config  # noqa: E402

# Property tests are derandomised by default (the same examples on every run, in CI too); explore new ones
# locally with HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=["gpt2", "llama"])
def decoder_arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_model(decoder_arch: str) -> mmtransfer.MultimodalGPT:
    """Image + audio model (tiny ViT, tiny fbank encoder) on a tiny GPT-2 or Llama decoder."""
    return mmtransfer.build_model(tiny_model_config(decoder_arch)).eval()
