"""MultimodalGPT: encoders -> projectors -> spliced into a pretrained causal LM's ``inputs_embeds``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmtransfer.chat import IGNORE_INDEX, template_of
from mmtransfer.config import ModelConfig, TrainableConfig
from mmtransfer.encoders.base import Encoder
from mmtransfer.errors import ConfigError, InputError
from mmtransfer.inference import InferenceMixin
from mmtransfer.modalities import ENCODER_KINDS, MODALITIES, media_inputs
from mmtransfer.model.ctc import ctc_alignment_loss, transcript_targets
from mmtransfer.model.decoder import context_length, hidden_size, placeholder_ids
from mmtransfer.model.precision import apply_dtypes
from mmtransfer.model.splice import splice
from mmtransfer.packing import check_decoder, pack, packed_loss, target_positions
from mmtransfer.processing import Processor
from mmtransfer.trainable import add_lora, apply_policy, check_policy, is_frozen


@dataclass
class Output:
    """``loss`` (scalar, or None without targets) and ``logits``: [B, L, V] for the LM, [B, C] for a head;
    ``overflow``: rows left out of the loss because prefix + text exceeds the decoder's context.
    A packed batch (``pack_tokens``): ``logits`` [K, V] at the K positions that predict a target, and
    ``sample_loss`` [B], each sample's mean target loss (NaN without targets); see ``mmtransfer.packing``.
    The CTC objective: ``logits`` are the audio tokens [B, M, D_lm]."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    overflow: list[int] = field(default_factory=list)
    sample_loss: torch.Tensor | None = None


class MultimodalGPT(InferenceMixin, nn.Module):
    """Any subset of {image, audio, text prompt} -> text, through a pretrained causal LM.

    Build it with ``mmtransfer.build_model(config)``; load a saved one with ``mmtransfer.load(dir)``.
    """

    def __init__(
        self,
        config: ModelConfig,
        decoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        encoders: dict[str, Encoder],
        projectors: dict[str, nn.Module],
    ) -> None:
        super().__init__()
        self.config = config
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.encoders = nn.ModuleDict(encoders)
        self.projectors = nn.ModuleDict(projectors)
        self.head = None
        if config.classifier == "head":
            if not config.labels:
                raise ConfigError("classifier 'head' needs config.labels (the class names)")
            self.head = nn.Linear(hidden_size(decoder), len(config.labels))
        elif config.classifier != "lm":
            raise ConfigError(f"classifier: '{config.classifier}' is not 'lm' or 'head'")
        self.placeholders = placeholder_ids(tokenizer)
        if config.video_frames < 1:
            raise ConfigError(f"video_frames: must be at least 1, got {config.video_frames}")
        self.processor = Processor(tokenizer, dict(self.encoders.items()), template_of(tokenizer, config.chat_template),
                                   config.video_frames)
        self.set_trainable(config.trainable)

    # -- what trains ---------------------------------------------------------------------------
    def set_trainable(self, cfg: TrainableConfig) -> None:
        """Apply a trainable policy to every component (the only place ``requires_grad`` is set)."""
        for modality, encoder in self.encoders.items():
            policy = cfg.encoder(modality)
            check_policy(policy, f"{modality}_encoder")
            apply_policy(encoder, policy)
        check_policy(cfg.projectors, "projectors")
        for projector in self.projectors.values():
            apply_policy(projector, cfg.projectors)
        check_policy(cfg.decoder, "decoder", allow_lora=True)
        if cfg.decoder == "lora":
            if not hasattr(self.decoder, "peft_config"):
                self.decoder = add_lora(self.decoder, cfg.lora)
            else:  # adapters from an earlier stage (which may have frozen them): only they train again
                for name, param in self.decoder.named_parameters():
                    param.requires_grad_("lora_" in name)
        else:
            apply_policy(self.decoder, cfg.decoder)
        if self.head is not None:
            self.head.requires_grad_(True)
        self.config.trainable = cfg
        apply_dtypes(self)

    def train(self, mode: bool = True) -> MultimodalGPT:
        """Like ``nn.Module.train``, but frozen encoders stay in eval mode (no dropout / BN updates)."""
        super().train(mode)
        for encoder in self.encoders.values():
            if is_frozen(encoder):
                encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- forward -----------------------------------------------------------------------------------
    def encode(self, modality: str, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder inputs (or cached ``features`` [B, N, D] + ``mask``) -> prefix [B, M, D_lm] + mask [B, M]."""
        if "features" in inputs:
            if torch.is_grad_enabled() and not is_frozen(self.encoders[modality]):
                raise RuntimeError(f"cached {modality} features reached the {modality} encoder while it trains: it "
                                   "would get no gradient (a DataLoader worker forked before a stage thawed it?)")
            feats, mask = inputs["features"], inputs["mask"]
        else:
            encoder = self.encoders[modality]
            dtype = next(encoder.parameters()).dtype  # an encoder may be stored in half precision
            inputs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                      for k, v in inputs.items()}
            feats, mask = encoder(**inputs)  # [B, N, D], [B, N]
        projector = self.projectors[modality]
        dtype = next(projector.parameters()).dtype  # a frozen encoder may run in half precision
        return projector(feats.to(dtype), mask.bool())

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        check: bool = True,
        **modal_inputs: dict[str, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token ids + modality inputs -> (inputs_embeds [B, L, D], attention_mask, position_ids, labels).
        ``check``: raise when a row does not fit the decoder's context."""
        prefixes = {}
        for modality, inputs in modal_inputs.items():
            if inputs is not None:
                emb, mask = self.encode(modality, inputs)
                prefixes[self.placeholders[modality]] = (emb, mask)
        embeds, mask, positions, labels = splice(
            self.decoder.get_input_embeddings(), input_ids, attention_mask, prefixes, labels
        )
        unused = self._unused_media_term(modal_inputs)
        if unused is not None:
            embeds = embeds + unused
        if check:
            self.check_context(int(mask.sum(1).max()) if mask.numel() else 0)
        return embeds, mask, positions, labels

    def _unused_media_term(self, media: dict[str, Any]) -> torch.Tensor | None:
        """When training distributed, 0 x a blank prefix of each encoder kind absent from ``media`` (every rank
        must run every module each step under DDP / FSDP; it changes no value or gradient); else None."""
        if not (self.training and torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()):
            return None
        terms = [0.0 * self._blank_prefix(kind).sum() for kind in self.encoders if media.get(kind) is None]
        return sum(terms) if terms else None

    def _blank_prefix(self, kind: str) -> torch.Tensor:
        """A prefix of one blank input through the ``kind`` encoder (when it trains) and its projector, for a
        batch without that modality: under DDP / FSDP a rank that skipped a module would hang or fail the
        others (DeepSpeed #7170, ms-swift #6171). Multiplied by zero, it changes no value or gradient."""
        encoder = self.encoders[kind]
        if not is_frozen(encoder):
            inputs = self.processor.preprocess(kind, [MODALITIES[kind].blank(None, encoder.sample_rate)])
            return self.encode(kind, {k: v.to(self.device) for k, v in inputs.items()})[0]
        features = torch.zeros(1, 1, encoder.out_dim, device=self.device)
        return self.encode(kind, {"features": features, "mask": torch.ones(1, 1, device=self.device)})[0]

    def check_context(self, length: int, new_tokens: int = 0) -> None:
        """Raise a clear error when a row of ``length`` positions (prefix + prompt + target), plus
        ``new_tokens`` to generate, does not fit the decoder's context (past it, a learned position table
        fails deep inside the decoder)."""
        limit = context_length(self.decoder)
        if limit is not None and length + new_tokens > limit:
            extra, fix = (f" + {new_tokens} new tokens", " or lower max_new_tokens") if new_tokens else ("", "")
            raise InputError(
                f"input of {length} positions (prefix + prompt + target){extra} exceeds the decoder's context of "
                f"{limit}: shorten the text, use fewer prefix tokens{fix}"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        pack_tokens: int | torch.Tensor | None = None,
        objective: str = "lm",
        **media: dict[str, torch.Tensor] | None,
    ) -> Output:
        """LM loss on target tokens only, or (with a classification head) cross-entropy on ``class_labels`` [B].

        Logits: [B, L, V] without labels; with labels, [B, k, V] for the last k positions (see
        ``_target_window``); [B, C] with a head. ``pack_tokens`` (with labels, LM only): pack the spliced
        samples into decoder rows of at most that many positions, each sample attending to itself only
        (``mmtransfer.packing``): the same loss with less padding; logits [K, V] at the target positions.
        ``objective="ctc"``: the CTC alignment loss of the audio tokens against the transcript, no decoder run
        (``mmtransfer.model.ctc``); logits [B, M, D_lm] are the audio tokens. ``media``: per encoder kind
        (``image``, ``audio``: ``ENCODER_KINDS``) the batch's preprocessed inputs for it, or None."""
        unknown = sorted(set(media) - set(ENCODER_KINDS))
        if unknown:
            raise TypeError(f"forward() got an unexpected keyword argument '{unknown[0]}'")
        media = {kind: media.get(kind) for kind in ENCODER_KINDS}  # encoded in the table's order, whatever the call's
        if objective == "ctc":
            return self._forward_ctc(labels, media.get("audio"))
        if objective != "lm":
            raise ConfigError(f"objective: '{objective}' is not lm or ctc")
        if pack_tokens is not None and self.head is not None:
            raise ConfigError("packing: needs the LM loss (classifier: lm); a classification head reads each "
                              "row's last position")
        training = labels is not None or class_labels is not None
        embeds, mask, positions, labels = self.embed(input_ids, attention_mask, labels, check=not training, **media)
        overflow: list[int] = []
        limit = context_length(self.decoder)
        if training and limit is not None and mask.shape[1] > limit:
            embeds, mask, positions, labels, class_labels, overflow = _fit(
                limit, embeds, mask, labels, class_labels)
        if self.head is not None:
            out = self.decoder(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                output_hidden_states=True, logits_to_keep=1,
            )
            last = out.hidden_states[-1][:, -1]  # left-padded: the last position is real
            logits = self.head(last.to(self.head.weight.dtype))  # [B, C]
            loss = None
            if class_labels is not None:  # 0 x logits when every row overflowed: the graph stays whole (DDP)
                loss = F.cross_entropy(logits, class_labels) if len(overflow) < len(logits) else 0.0 * logits.sum()
            return Output(loss, logits, overflow)
        if labels is None:
            out = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
            return Output(None, out.logits)
        if pack_tokens is not None:
            return self._forward_packed(embeds, mask, positions, labels, int(pack_tokens), overflow)
        # Rows are left-padded and targets come last, so every target lies in the last ``keep`` positions: the
        # LM head (vocab x width, the largest matmul of a small decoder) runs on those only, not on the prefix
        # and prompt whose labels are all ignored. Same loss; logits are [B, keep, V] for that window.
        keep = _target_window(labels)
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                           labels=labels[:, -keep:], logits_to_keep=keep)
        loss = out.loss if bool(labels.ne(IGNORE_INDEX).any()) else 0.0 * out.logits.sum()
        return Output(loss, out.logits, overflow)

    def _forward_ctc(self, labels: torch.Tensor | None, audio: dict[str, torch.Tensor] | None) -> Output:
        """CTC of each row's audio tokens against its transcript tokens, scored on the decoder's input embeddings."""
        if labels is None or audio is None:
            raise ConfigError("objective ctc: needs one audio clip and its transcript in every sample (task asr)")
        tokens, mask = self.encode("audio", audio)  # [B, M, D]
        if tokens.shape[0] != labels.shape[0]:
            raise ConfigError(f"objective ctc: needs one audio clip per sample, got {tokens.shape[0]} clips for "
                              f"{labels.shape[0]} samples")
        targets, lengths = transcript_targets(labels, self.tokenizer.all_special_ids)
        loss = ctc_alignment_loss(tokens, mask, self.decoder.get_input_embeddings().weight, targets, lengths)
        unused = self._unused_media_term({"audio": audio})
        return Output(loss if unused is None else loss + unused, tokens)

    def _forward_packed(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor,
        budget: int, overflow: list[int],
    ) -> Output:
        """The LM loss of a spliced batch run as packed rows (see ``mmtransfer.packing``)."""
        check_decoder(self.decoder, int(mask.sum(1).max()))
        attn = getattr(self.decoder.config, "_attn_implementation", None) or "sdpa"
        packed = pack(embeds, mask, positions, labels, budget, attn)
        keep = target_positions(packed.labels)  # none: logits [0, V], every parameter still in the graph (DDP)
        out = self.decoder(inputs_embeds=packed.inputs_embeds, attention_mask=packed.attention_mask,
                           position_ids=packed.position_ids, logits_to_keep=keep, **packed.varlen_kwargs)
        loss, per_sample = packed_loss(out.logits, packed, keep)
        return Output(loss, out.logits, overflow, sample_loss=per_sample)

    def sequence_logprobs(self, batch: dict[str, Any], greedy: bool = False
                          ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sum of log-probabilities of each row's target tokens: [B] (label words, lmms-eval's log-likelihood).
        ``greedy``: also whether greedy decoding gives every target token, [B] bool."""
        embeds, mask, positions, labels = self.embed(
            batch["input_ids"], batch["attention_mask"], batch["labels"], **media_inputs(batch))
        logits = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t+1
        keep = labels != IGNORE_INDEX
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total = (logp * keep).sum(1)
        if not greedy:
            return total
        return total, ((logits.argmax(-1) == labels) | ~keep).all(1)

    def save_pretrained(self, directory: str, trainable_only: bool = False) -> None:
        """Write config.json + model.safetensors + tokenizer files + a README.md card (``mmtransfer.model.saving``)."""
        from mmtransfer.model.saving import save_pretrained

        save_pretrained(self, directory, trainable_only=trainable_only)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    trainable_only: bool = False, commit_message: str = "Upload mmtransfer model") -> Any:
        """Upload a ``save_pretrained`` of this model (with its model card) to the hub repository ``repo_id``,
        created when missing; see ``mmtransfer.model.saving.push_to_hub``."""
        from mmtransfer.model.saving import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, trainable_only=trainable_only,
                           commit_message=commit_message)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass of the decoder and encoders (less memory, ~30% slower)."""
        self.decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        for encoder in self.encoders.values():
            encoder.set_grad_checkpointing(True)


def _fit(
    limit: int, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
    class_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[int]]:
    """Keep the last ``limit`` positions of left-padded rows: rows that fit are unchanged, the longer ones are
    cut (possibly inside a media span) and take no part in the loss, so a training batch with a too-long
    sample runs on instead of failing deep inside the decoder. Returns the new tensors and those rows."""
    too_long = mask.sum(1) > limit  # [B]
    embeds, mask = embeds[:, -limit:], mask[:, -limit:]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    if labels is not None:
        labels = labels[:, -limit:].masked_fill(too_long[:, None], IGNORE_INDEX)
    if class_labels is not None:
        class_labels = class_labels.masked_fill(too_long, IGNORE_INDEX)
    return embeds, mask, positions, labels, class_labels, too_long.nonzero().flatten().tolist()


def _target_window(labels: torch.Tensor) -> int:
    """Length of the shortest suffix of ``labels`` [B, L] that holds every target plus the position before the
    first one (which predicts it); at least 2 so that the shifted loss has a position to score."""
    has_target = labels.ne(IGNORE_INDEX).any(0)  # [L]
    if not bool(has_target.any()):
        return labels.shape[1]
    first = int(has_target.int().argmax())
    return min(max(labels.shape[1] - first + 1, 2), labels.shape[1])

