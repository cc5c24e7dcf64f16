"""On-disk cache of a frozen encoder's outputs, so each file is encoded once across epochs and runs.

Key of an item: sha256 over the encoder's identity (its ``to_config()``, which covers its preprocessing,
and a hash of every weight), ``CACHE_VERSION`` (our own loading: RGB conversion, resampling), the
encoder's current dtype and the sha256 of the file's bytes. Editing the file, the weights or the
preprocessing config therefore misses the cache. Each item is one safetensors file holding its valid
tokens ``features`` [N, D], under ``directory/<key[:2]>/<key>.safetensors``, written to a temporary file
and renamed, so readers (other workers, other runs) never see a partial file.

Misses are computed with the encoder on its own device. A CUDA encoder cannot run inside a forked
DataLoader worker: with ``num_workers > 0``, fill the cache first by iterating the data once with
``num_workers=0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import get_worker_info

from mmtransfer.encoders.base import Encoder
from mmtransfer.trainable import is_frozen

CACHE_VERSION = 1  # bump when mmtransfer.io's decoding changes what an encoder sees


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes, remembered per (path, size, mtime) so later epochs do not re-read it."""
    st = os.stat(path)
    memo = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        _HASHES[memo] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _HASHES[memo]


_HASHES: dict[tuple[str, int, int], str] = {}


def encoder_fingerprint(encoder: Encoder) -> str:
    """sha256 of the encoder's config and every parameter and buffer (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(json.dumps(encoder.to_config(), sort_keys=True, default=str).encode())
    digest.update(f"v{CACHE_VERSION}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class FeatureCache:
    """Features of one frozen encoder, cached under ``directory``.

    Build it after the encoder's weights are final (the weight hash is taken here); a later dtype cast
    (e.g. half-precision frozen encoders) is part of each key. ``computed`` / ``loaded`` count items.
    """

    def __init__(self, directory: str | os.PathLike, encoder: Encoder) -> None:
        if not is_frozen(encoder):
            raise ValueError("a feature cache needs a frozen encoder: this one has trainable parameters")
        self.directory = Path(directory)
        self.encoder = encoder
        self.fingerprint = encoder_fingerprint(encoder)
        self.computed = 0
        self.loaded = 0

    def key(self, file: str | os.PathLike) -> str:
        dtype = next(self.encoder.parameters()).dtype
        return hashlib.sha256(f"{self.fingerprint}|{dtype}|{file_hash(file)}".encode()).hexdigest()

    def contains(self, file: str | os.PathLike) -> bool:
        """Whether ``file``'s features are on disk (the dataset then need not decode it)."""
        return self._path(self.key(file)).exists()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        try:
            return load_file(path)["features"]
        except (FileNotFoundError, SafetensorError, KeyError):  # absent, or damaged on disk: recompute
            return None

    def _store(self, key: str, features: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({"features": features.contiguous()}, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def features(
        self, files: list[str], encoder_inputs: Callable[[list[int]], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``files`` -> ``{"features": [B, N, D] (zero-padded, CPU), "mask": [B, N] bool}``.

        ``encoder_inputs(indices)`` gives the encoder's preprocessed inputs for those items; it is only
        called for misses. Items with the same key in one batch are encoded once.
        """
        keys = [self.key(f) for f in files]
        first: dict[str, int] = {}  # key -> its first item in this batch
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        found = {key: t for key in first if (t := self._load(key)) is not None}
        self.loaded += sum(k in found for k in keys)
        missing = [i for key, i in first.items() if key not in found]
        if missing:
            for i, feats in zip(missing, self._encode(encoder_inputs(missing))):
                self._store(keys[i], feats)
                found[keys[i]] = feats
            self.computed += len(missing)
        tokens = [found[k] for k in keys]
        lengths = torch.tensor([len(t) for t in tokens])
        mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
        return {"features": pad_sequence(tokens, batch_first=True), "mask": mask}

    @torch.no_grad()
    def _encode(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Encoder inputs -> each item's valid tokens [N_i, D] on the CPU."""
        param = next(self.encoder.parameters())
        if get_worker_info() is not None and param.device.type == "cuda":
            raise RuntimeError(
                "feature cache miss inside a DataLoader worker with a CUDA encoder: fill the cache first "
                "by iterating the data once with num_workers=0"
            )
        inputs = {
            k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
        }
        training = self.encoder.training
        self.encoder.eval()  # cached features must not depend on dropout
        try:
            feats, mask = self.encoder(**inputs)  # [B, N, D], [B, N]; valid tokens come first
        finally:
            self.encoder.train(training)
        return [f[: int(n)].cpu().clone() for f, n in zip(feats, mask.sum(1))]

