"""Where pretrained weights come from, in one order for every name:

1. an explicit local directory (``name`` is a path);
2. the Hugging Face cache (no network);
3. the Hugging Face hub, only when online: ``HF_HUB_OFFLINE`` unset and the endpoint answers within
   a few seconds;
4. weights shipped in pip packages, converted once into standard HF / timm format under
   ``$MMTRANSFER_CACHE`` (default ``~/.cache/mmtransfer/weights``) and reused.

``resolve`` gives a model directory, ``resolve_tokenizer`` a tokenizer directory and
``timm_checkpoint`` / ``timm_pretrained_overlay`` a timm checkpoint. Each raises
``WeightsNotFoundError`` listing every source tried when none has the weights. ``known_weights``
reports the same walk without downloading or converting.

Modules: ``resolve`` (the walk), ``hub`` (Hugging Face cache and hub), ``catalogue`` (the pip packages,
as data), ``cache`` (conversion cache, ``prepare``), ``substitute`` (opt-in substitutes, e.g. the base
SmolLM2 name served by the Instruct weights only with ``MMTRANSFER_ALLOW_SUBSTITUTE=1``), ``listing``
and ``convert/`` (one converter per source format).
"""

from mmtransfer.errors import WeightsNotFoundError
from mmtransfer.weights.cache import CACHE_ENV, DEFAULT_CACHE, MARKER, cache_root, prepare
from mmtransfer.weights.catalogue import PACKAGED, Packaged, Source
from mmtransfer.weights.hub import HUB_PROBE_TIMEOUT_S, hub_offline
from mmtransfer.weights.listing import KnownWeights, known_weights
from mmtransfer.weights.resolve import resolve, resolve_tokenizer, timm_checkpoint, timm_pretrained_overlay, walk
from mmtransfer.weights.substitute import SUBSTITUTE_ENV

__all__ = [
    "CACHE_ENV",
    "DEFAULT_CACHE",
    "HUB_PROBE_TIMEOUT_S",
    "MARKER",
    "PACKAGED",
    "SUBSTITUTE_ENV",
    "KnownWeights",
    "Packaged",
    "Source",
    "WeightsNotFoundError",
    "cache_root",
    "hub_offline",
    "known_weights",
    "prepare",
    "resolve",
    "resolve_tokenizer",
    "timm_checkpoint",
    "timm_pretrained_overlay",
    "walk",
]
