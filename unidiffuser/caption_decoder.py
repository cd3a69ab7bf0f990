"""The caption decoder: a GPT-2 that reads the text latent as a prefix and writes the caption.

Parameter names follow diffusers' ``text_decoder/`` layout (``encode_prefix``, ``decode_prefix``,
``transformer.*``). Decoding is batched: one beam search over the whole batch through transformers'
``generate`` (the reference decodes one record at a time with a hand-written beam search).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

GPT2_CONFIG_KEYS = (
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "layer_norm_epsilon",
    "initializer_range",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "bos_token_id",
    "eos_token_id",
)
_IGNORED_KEY_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class CaptionDecoder(nn.Module):
    """Text latent (B, L, prefix_hidden_dim) -> caption tokens, plus the encoder side (CLIP text -> latent)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        prefix_inner_dim = config["prefix_inner_dim"]
        prefix_hidden_dim = config.get("prefix_hidden_dim")
        n_embd = config.get("n_embd", 768)
        if prefix_hidden_dim is None:
            if prefix_inner_dim != n_embd:
                raise ValueError(
                    "text_decoder config: prefix_hidden_dim is needed when prefix_inner_dim != n_embd"
                )
            self.encode_prefix: nn.Module = nn.Identity()
            self.decode_prefix: nn.Module = nn.Identity()
        else:
            self.encode_prefix = nn.Linear(prefix_inner_dim, prefix_hidden_dim)
            self.decode_prefix = nn.Linear(prefix_hidden_dim, n_embd)
        gpt_kwargs = {k: config[k] for k in GPT2_CONFIG_KEYS if config.get(k) is not None}
        gpt_config = GPT2Config(**gpt_kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.transformer = GPT2LMHeadModel(gpt_config)

    @property
    def latent_dim(self) -> int:
        return self.config.get("prefix_hidden_dim") or self.config["prefix_inner_dim"]

    @staticmethod
    def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop legacy non-parameter buffers and restore the tied lm_head if a file left it out."""
        cleaned = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_KEY_SUFFIXES)}
        if "transformer.lm_head.weight" not in cleaned and "transformer.transformer.wte.weight" in cleaned:
            cleaned["transformer.lm_head.weight"] = cleaned["transformer.transformer.wte.weight"]
        return cleaned

    def encode(self, clip_text_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP text encoder hidden states (B, 77, 768) -> UniDiffuser text latent (B, 77, 64)."""
        return self.encode_prefix(clip_text_embeds)

    @torch.inference_mode()
    def generate(
        self,
        text_latents: torch.Tensor,
        *,
        eos_token_id: int,
        num_beams: int = 5,
        max_new_tokens: int = 67,
    ) -> torch.Tensor:
        """Batched beam search from text latents; returns generated token ids (B, T), padded with EOS."""
        prefix = self.decode_prefix(text_latents.to(self.transformer.dtype))
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        return self.transformer.generate(
            inputs_embeds=prefix,
            attention_mask=mask,
            num_beams=num_beams,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
            length_penalty=1.0,
            num_return_sequences=1,
        )
