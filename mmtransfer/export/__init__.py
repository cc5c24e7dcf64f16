"""Export a model to another library's format: ``export(model_or_dir, out, format="hf")``.

``hf``: a transformers LLaVA-style folder (``AutoModelForImageTextToText`` / ``AutoProcessor``), see
``mmtransfer.export.hf``.
"""

from __future__ import annotations

from pathlib import Path

from mmtransfer.errors import ConfigError
from mmtransfer.model import MultimodalGPT

FORMATS = ("hf",)


def export(model: MultimodalGPT | str | Path, out: str | Path, format: str = "hf") -> Path:
    """Write ``model`` (or the model saved in that directory) to ``out`` in ``format``; returns ``out``.
    A model that the format cannot hold raises ConfigError naming the part, and nothing is written."""
    if format not in FORMATS:
        raise ConfigError(f"format: '{format}' is not one of {list(FORMATS)}")
    if not isinstance(model, MultimodalGPT):
        from mmtransfer.model.saving import load

        model = load(model)
    from mmtransfer.export.hf import export_hf

    return export_hf(model, out)


__all__ = ["FORMATS", "export"]
