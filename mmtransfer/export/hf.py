"""``export(model, out, format="hf")``: a LLaVA-style model -> a folder that transformers opens on its own.

``AutoModelForImageTextToText.from_pretrained(out)`` gives ``LlavaForConditionalGeneration`` (or
``FastVlmForConditionalGeneration`` for a timm CNN tower, see ``towers``) and ``AutoProcessor`` a
``LlavaProcessor`` with a ``TimmWrapperImageProcessor`` that runs the encoder's own preprocessing. The parts:

- the image encoder -> ``vision_tower`` (``towers.convert_tower``);
- the MLP projector -> ``multi_modal_projector`` (``linear_1`` / ``act`` / ``linear_2``); a linear projector
  becomes ``linear_1`` with an identity ``linear_2`` and no activation (exact: multiplying by 1, adding 0);
- the decoder (LoRA merged) -> ``language_model`` and ``lm_head``, untied (LLaVA ties ``lm_head`` to an
  ``embed_tokens`` by name, which e.g. GPT-2's ``wte`` is not).

Two differences in how images enter: here one ``<image>`` placeholder stands for an image, there the processor
repeats the image token once per feature; and our placeholder id may lie past the decoder's vocabulary (it is
never looked up), while LLaVA embeds every input id first. So the embedding and LM head grow to the tokenizer's
size with zero rows, and ``generation_config.suppress_tokens`` keeps generation off those ids: logits over the
decoder's own vocabulary and greedy output are unchanged.

Parts that cannot map are refused (ConfigError naming the part) before anything is written. The folder is written
to a temporary directory, loaded back with transformers and checked (image features and text logits against this
model), and only then renamed to ``out``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    GenerationConfig,
    LlavaProcessor,
    PreTrainedModel,
    TimmWrapperImageProcessor,
)
from transformers.utils import logging as hf_logging

from mmtransfer.atomic import atomic_dir
from mmtransfer.errors import ConfigError
from mmtransfer.export.towers import Tower, convert_tower
from mmtransfer.modalities import PLACEHOLDERS
from mmtransfer.model import MultimodalGPT
from mmtransfer.model.decoder import hidden_size
from mmtransfer.projectors import MLP, Linear, PixelShuffle

CLASSES = {"llava": "LlavaForConditionalGeneration", "fast_vlm": "FastVlmForConditionalGeneration"}


def export_hf(model: MultimodalGPT, out: str | Path) -> Path:
    """Write ``model`` to ``out`` as a transformers LLaVA-style model with its processor; returns ``out``."""
    _check_parts(model)
    tower = convert_tower(model.encoders["image"])
    decoder, dtype = _merged(model.decoder), _dtype(model)
    vocab = max(decoder.get_input_embeddings().num_embeddings, len(model.tokenizer))
    config = _config(model, tower, decoder, vocab)
    config.dtype = dtype  # what ``from_pretrained(out, dtype="auto")`` loads in
    state = {f"model.vision_tower.{k}": v for k, v in tower.state.items()}
    state |= {f"model.multi_modal_projector.{k}": v for k, v in _projector_state(model).items()}
    state |= _language_state(decoder, vocab)
    _fill_and_check(config, state)
    with atomic_dir(out) as tmp:
        config.save_pretrained(tmp)
        save_torch_state_dict({k: _cast(v, dtype) for k, v in state.items()}, tmp)
        _generation_config(model, decoder, vocab).save_pretrained(tmp)
        _save_processor(model, tower, tmp)
        _verify(model, tmp, tower)
    return Path(out)


def _dtype(model: MultimodalGPT) -> torch.dtype:
    """One dtype for every exported tensor (LLaVA loads in one): the model's when all its floating parameters
    share one, else float32 (lossless for the parts stored in half precision)."""
    kinds = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else torch.float32


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A tensor ready to save: on the CPU, contiguous, floating ones in ``dtype``."""
    tensor = tensor.detach().cpu().contiguous()
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _check_parts(model: MultimodalGPT) -> None:
    """ConfigError naming the first part that LLaVA cannot hold."""
    if "audio" in model.encoders:
        name = (model.config.audio_encoder or {}).get("name", type(model.encoders["audio"]).__name__)
        raise ConfigError(f"audio_encoder: '{name}': LLaVA-style transformers classes take images and text only; "
                          "export a model without an audio encoder")
    if "image" not in model.encoders:
        raise ConfigError("image_encoder: none; a text-only model is its decoder: use model.decoder.save_pretrained")
    if model.head is not None:
        raise ConfigError("classifier: 'head' adds a classification head that LLaVA has no place for")
    projector, width = model.projectors["image"], hidden_size(model.decoder)
    name = (model.config.image_projector or {}).get("name", type(projector).__name__)
    if isinstance(projector, PixelShuffle):  # the one grid projector transformers has a class for
        raise ConfigError(f"image_projector: '{name}' has no transformers equivalent: Idefics3's connector is a pixel "
                          "shuffle and one bias-free linear layer behind its own SigLIP tower, and ours ends in an "
                          "MLP; LLaVA's projector is linear -> activation -> linear on each token ('mlp', 'linear')")
    if not isinstance(projector, (MLP, Linear)):
        raise ConfigError(f"image_projector: '{name}' ({type(projector).__name__}) has no LLaVA equivalent; LLaVA's "
                          "projector is linear -> activation -> linear on each token (the 'mlp' and 'linear' ones)")
    if isinstance(projector, MLP) and projector.net[0].out_features != width:
        raise ConfigError(f"image_projector: '{name}' has hidden_dim {projector.net[0].out_features}, but LLaVA's "
                          f"hidden layer is as wide as the decoder ({width})")


def _merged(decoder: nn.Module) -> PreTrainedModel:
    """The decoder with LoRA adapters merged into its weights (on a copy: the model keeps its adapters)."""
    if hasattr(decoder, "merge_and_unload"):
        return copy.deepcopy(decoder).merge_and_unload()
    return decoder


def _projector_state(model: MultimodalGPT) -> dict[str, torch.Tensor]:
    """LLaVA ``multi_modal_projector`` tensors: MLP as is, linear as linear_1 plus an identity linear_2."""
    projector = model.projectors["image"]
    if isinstance(projector, MLP):
        first, last = projector.net[0], projector.net[2]
    else:
        first, width = projector.proj, projector.proj.out_features
        last = nn.Linear(width, width).to(first.weight)
        nn.init.eye_(last.weight)
        nn.init.zeros_(last.bias)
    return {"linear_1.weight": first.weight, "linear_1.bias": first.bias,
            "linear_2.weight": last.weight, "linear_2.bias": last.bias}


def _language_state(decoder: PreTrainedModel, vocab: int) -> dict[str, torch.Tensor]:
    """``model.language_model.*`` (the decoder's base model) and ``lm_head.weight``, embeddings grown to
    ``vocab`` rows; ConfigError when the LM head has a bias (LLaVA's has none)."""
    base = getattr(decoder, decoder.base_model_prefix)
    head = decoder.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ConfigError(f"decoder: {type(decoder).__name__}'s LM head {'has a bias' if head else 'is missing'}; "
                          "LLaVA's lm_head is a plain linear map")
    embedding = base.get_input_embeddings().weight
    state = {f"model.language_model.{k}": v for k, v in base.state_dict().items()}
    key = next(f"model.language_model.{k}" for k, p in base.named_parameters() if p is embedding)
    state[key] = _grow(embedding, vocab)
    state["lm_head.weight"] = _grow(head.weight, vocab)
    return state


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A new [rows, D] tensor: ``weight`` [V, D] then zero rows."""
    return torch.cat([weight.detach(), weight.new_zeros(rows - weight.shape[0], weight.shape[1])])


def _config(model: MultimodalGPT, tower: Tower, decoder: PreTrainedModel, vocab: int) -> Any:
    """The LlavaConfig (or FastVlmConfig) of the export."""
    text = decoder.config.to_dict() | {"vocab_size": vocab, "tie_word_embeddings": False}
    image_id = model.tokenizer.convert_tokens_to_ids(PLACEHOLDERS["image"])
    activation = "gelu" if isinstance(model.projectors["image"], MLP) else "linear"
    return AutoConfig.for_model(
        tower.model_type, vision_config=tower.config.to_dict(), text_config=text, image_token_id=image_id,
        image_seq_length=tower.num_tokens, projector_hidden_act=activation, vision_feature_layer=-1,
        vision_feature_select_strategy=tower.strategy, multimodal_projector_bias=True, tie_word_embeddings=False,
        architectures=[CLASSES[tower.model_type]],
    )


def _fill_and_check(config: Any, state: dict[str, torch.Tensor]) -> None:
    """ConfigError when ``state`` does not fill exactly the model ``config`` describes (built on the meta device,
    so nothing is allocated); a missing ViT pooler (unused by LLaVA) is filled with zeros."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForImageTextToText.from_config(config).state_dict().items()}
    for key in [k for k in shapes if k not in state and ".pooler." in k]:
        state[key] = torch.zeros(shapes[key])
    missing = sorted(set(shapes) - set(state))
    wrong = sorted(k for k in set(shapes) & set(state) if shapes[k] != state[k].shape)
    unexpected = sorted(set(state) - set(shapes))
    if missing or wrong or unexpected:
        names = (missing + wrong + unexpected)[:3]
        raise ConfigError(f"{_part(names[0])}: {CLASSES[config.model_type]} does not hold its weights ({len(missing)} "
                          f"missing, {len(wrong)} wrongly shaped, {len(unexpected)} unexpected, e.g. {names})")


def _part(key: str) -> str:
    """The config field of the part that a LLaVA tensor name belongs to."""
    return "image_encoder" if ".vision_tower." in key else "image_projector" if "projector" in key else "decoder"


def _generation_config(model: MultimodalGPT, decoder: PreTrainedModel, vocab: int) -> GenerationConfig:
    """The tokenizer's special ids, and the grown rows (placeholders) suppressed."""
    tok, own = model.tokenizer, decoder.get_input_embeddings().num_embeddings
    return GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, suppress_tokens=list(range(own, vocab)) or None)


def _save_processor(model: MultimodalGPT, tower: Tower, folder: Path) -> None:
    """A LlavaProcessor: the tokenizer (with ``<image>``) and a TimmWrapperImageProcessor with our preprocessing."""
    processor = LlavaProcessor(
        image_processor=TimmWrapperImageProcessor(pretrained_cfg=tower.pretrained_cfg), tokenizer=model.tokenizer,
        patch_size=tower.patch_size, vision_feature_select_strategy=tower.strategy,
        num_additional_image_tokens=tower.extra_tokens, image_token=PLACEHOLDERS["image"],
        chat_template=chat_template(model.processor.template),
    )
    processor.save_pretrained(folder)
    # transformers writes the image processor's resolved ``data_config`` but rebuilds it from ``pretrained_cfg``
    path = folder / "processor_config.json"
    data = json.loads(path.read_text())
    data["image_processor"]["pretrained_cfg"] = data["image_processor"]["data_config"]
    path.write_text(json.dumps(data, indent=2) + "\n")


# Content parts -> one string per message, as LLaVA's and Idefics' processors take them: an image part becomes
# ``<image>`` where it stands, text parts their text. Jinja, since the template travels in the export's files.
_PARTS_TO_STRINGS = (
    "{%- set ns = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set ns.messages = ns.messages + [m] -%}"
    "{%- else -%}{%- set text = namespace(s='') -%}"
    "{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'image' -%}{%- set text.s = text.s + '" + PLACEHOLDERS["image"] + "' -%}"
    "{%- elif p['type'] == 'text' -%}{%- set text.s = text.s + p['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': text.s}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = ns.messages -%}"
)
# Our plain template (``mmtransfer.chat``): the turns' contents one after another, EOS after each assistant turn.
# BOS is left to the tokenizer, which adds it when it is one that does (as ours renders).
_PLAIN = ("{%- for m in messages -%}{{ m['content'] }}{%- if m['role'] == 'assistant' -%}{{ eos_token }}"
          "{%- endif -%}{%- endfor -%}")


def chat_template(template: str | None) -> str:
    """The export's chat template: ``template`` (None: our plain one) behind a preamble that turns the standard
    content parts (``[{"type": "image"}, {"type": "text", "text": ...}]``) into the strings it renders."""
    return _PARTS_TO_STRINGS + (template if template is not None else _PLAIN)


@torch.inference_mode()
def _verify(model: MultimodalGPT, folder: Path, tower: Tower) -> None:
    """Load ``folder`` with transformers and compare image features [N, D] on a random image and logits over
    the decoder's vocabulary on random ids with ``model``'s; ConfigError naming the part that differs."""
    loaded = _load_quietly(folder).to(model.device).eval()
    was_training, gen = model.training, torch.Generator().manual_seed(0)
    half = any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters())
    model.eval()
    try:
        pixels = torch.randn((1, *tower.input_size), generator=gen).to(model.device)
        ours = model.encode("image", {"pixel_values": pixels})[0][0]
        theirs = loaded.get_image_features(pixel_values=pixels).pooler_output[0]
        _compare("image_encoder", ours, theirs, half)
        own = model.decoder.get_input_embeddings().num_embeddings
        ids = torch.randint(own, (1, 8), generator=gen).to(model.device)
        _compare("decoder", model.decoder(input_ids=ids).logits, loaded(input_ids=ids).logits[..., :own], half)
    finally:
        model.train(was_training)


def _load_quietly(folder: Path) -> PreTrainedModel:
    """``AutoModelForImageTextToText.from_pretrained`` in the export's dtype, without its progress bar (an internal
    check, not a load the user asked for)."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForImageTextToText.from_pretrained(folder, dtype="auto")
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _compare(part: str, ours: torch.Tensor, theirs: torch.Tensor, half: bool) -> None:
    """ConfigError unless ``theirs`` matches ``ours`` to 1e-4 of their scale (1e-1 when some of our parts compute
    in half precision while the export runs in one dtype: a mapping error is off by the whole scale)."""
    ours, theirs = ours.float(), theirs.float()
    diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("inf")
    if not diff <= (1e-1 if half else 1e-4) * max(1.0, ours.abs().max().item()):
        raise ConfigError(f"{part}: the exported model does not reproduce this model's outputs there (shapes "
                          f"{tuple(ours.shape)} / {tuple(theirs.shape)}, max abs diff {diff:.2e})")
