"""The model core: ``MultimodalGPT`` (encoders -> projectors -> a pretrained causal LM) and what builds, stores and
saves it.

- ``core``: the module itself: encode, splice, forward (LM loss, packed loss, classification head, CTC alignment).
- ``builder``: a ``ModelConfig`` -> a model (encoders, projectors, the decoder and its tokenizer).
- ``decoder``: loading the pretrained causal LM and its tokenizer, placeholders, context length.
- ``precision``: how weights are stored (dtype per component, a quantised decoder base).
- ``saving`` and ``card``: ``save_pretrained`` / ``load`` and the model card written beside the weights.
- ``splice`` and ``ctc``: media prefixes into the token embeddings; the CTC alignment loss.
"""

from mmtransfer.lazy import lazy_exports

_EXPORTS = {"MultimodalGPT": "core", "Output": "core", "build_model": "builder", "load": "saving",
            "save_pretrained": "saving"}

# importing one submodule (``model.decoder`` for the data pipeline) does not load the whole core, and the core's
# modules can import each other's submodules freely
__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["MultimodalGPT", "Output", "build_model", "load", "save_pretrained"]
