"""Part (c): the GPT-2 caption decoder (``unidiffuser.caption_decoder.CaptionDecoder``), trained as the
paper's: CLIP text hidden states -> ``encode_prefix`` (the ``text_dim`` bottleneck, UniDiffuser's text latent)
-> ``decode_prefix`` -> GPT-2 prefix, which must write the caption. The CLIP text encoder is frozen; the prefix
layers and GPT-2 train jointly. The latent is perturbed with a little Gaussian noise during training, so that
the decoder also reads the slightly-off latents the diffusion model samples.

After training, the latent's per-dimension mean and scale are folded into ``encode_prefix`` (and undone in
``decode_prefix``): text latents then have zero mean and unit variance, with no engine change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from transformers import GPT2Tokenizer

from shapes.common import Meter, autocast, batches, lr_at, set_lr
from shapes.world import parse_caption
from unidiffuser.caption_decoder import CaptionDecoder


@dataclass
class CaptionConfig:
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_positions: int = 128
    text_dim: int = 16
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    latent_noise: float = 0.2  # noise std relative to each latent dimension's std
    amp: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def build_decoder(cfg: CaptionConfig, clip_hidden: int, text_tokens: int, tokenizer: GPT2Tokenizer):
    config = {
        "_class_name": "UniDiffuserTextDecoder",
        "prefix_length": text_tokens,
        "prefix_inner_dim": clip_hidden,
        "prefix_hidden_dim": cfg.text_dim,
        "vocab_size": len(tokenizer),
        "n_positions": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return CaptionDecoder(config)


def caption_tokens(tokenizer: GPT2Tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels): each caption then end-of-text, padded with end-of-text; padding labels are -100."""
    eos = tokenizer.eos_token_id
    encoded = [tokenizer(c).input_ids + [eos] for c in captions]
    length = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), length), eos, dtype=torch.long)
    labels = torch.full((len(encoded), length), -100, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        labels[i, : len(e)] = torch.tensor(e)
    return ids, labels


def decoder_loss(
    decoder: CaptionDecoder, latents: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    prefix = decoder.decode_prefix(latents)
    tokens = decoder.transformer.transformer.wte(ids)
    logits = decoder.transformer(inputs_embeds=torch.cat([prefix, tokens], dim=1)).logits
    start = prefix.shape[1] - 1  # the last prefix position predicts the first token
    logits = logits[:, start : start + ids.shape[1]]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def train_caption_decoder(
    hidden: torch.Tensor,
    captions: list[str],
    tokenizer: GPT2Tokenizer,
    cfg: CaptionConfig,
    device: torch.device,
    generator: torch.Generator,
    val: tuple[torch.Tensor, list[str]] | None = None,
) -> tuple[CaptionDecoder, dict]:
    """Train on CLIP text hidden states (N, L, H) of ``captions``; ``val`` = (hidden, captions)."""
    decoder = build_decoder(cfg, hidden.shape[-1], hidden.shape[1], tokenizer).to(device).train()
    ids, labels = caption_tokens(tokenizer, captions)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meter = Meter("caption", cfg.steps)
    for step, idx in enumerate(batches(len(ids), cfg.batch_size, cfg.steps, generator)):
        set_lr(optimizer, lr_at(step, cfg.steps, cfg.lr, cfg.warmup))
        with autocast(device, cfg.amp):
            latents = decoder.encode(hidden[idx].to(device))
            scale = latents.detach().float().std(dim=(0, 1), keepdim=True)
            noise = torch.randn(latents.shape, generator=generator).to(device)
            latents = latents + cfg.latent_noise * scale * noise
            loss = decoder_loss(decoder, latents, ids[idx].to(device), labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        meter.add(step, loss=loss.item())
    decoder.eval()
    stats = normalise_latents(decoder, hidden, device)
    report = {
        "config": cfg.to_dict(),
        "curve": meter.curve,
        "final": meter.final(),
        "seconds": round(meter.elapsed, 1),
        "parameters": sum(p.numel() for p in decoder.parameters()),
        "latent_normalisation": stats,
    }
    if val is not None:
        report["val"] = evaluate_decoder(decoder, tokenizer, val[0], val[1], device)
    return decoder, report


@torch.no_grad()
def normalise_latents(
    decoder: CaptionDecoder, hidden: torch.Tensor, device: torch.device | str, limit: int = 4096
) -> dict:
    """Fold the latent's per-dimension mean and std into encode_prefix / decode_prefix (same outputs)."""
    latents = torch.cat([decoder.encode(h.to(device)).float().cpu() for h in hidden[:limit].split(512)])
    flat = latents.reshape(-1, latents.shape[-1])
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    enc, dec = cast(torch.nn.Linear, decoder.encode_prefix), cast(torch.nn.Linear, decoder.decode_prefix)
    mean_d, std_d = mean.to(enc.weight.device), std.to(enc.weight.device)
    dec.bias.add_(dec.weight @ mean_d)
    dec.weight.mul_(std_d[None, :])
    enc.weight.div_(std_d[:, None])
    enc.bias.sub_(mean_d).div_(std_d)
    return {"mean_abs_max": float(mean.abs().max()), "std_min": float(std.min()), "std_max": float(std.max())}


@torch.no_grad()
def decode(decoder: CaptionDecoder, tokenizer: GPT2Tokenizer, latents: torch.Tensor, num_beams: int = 1):
    tokens = decoder.generate(
        latents, eos_token_id=tokenizer.eos_token_id, num_beams=num_beams, max_new_tokens=40
    )
    return [s.strip() for s in tokenizer.batch_decode(tokens, skip_special_tokens=True)]


@torch.no_grad()
def evaluate_decoder(
    decoder: CaptionDecoder, tokenizer: GPT2Tokenizer, hidden: torch.Tensor, captions: list[str], device,
    noise: float = 0.0,
) -> dict:  # fmt: skip
    """Exact-match rate and attribute agreement of greedy decodes from (optionally noised) clean latents."""
    latents = decoder.encode(hidden.to(device)).float()
    if noise:
        latents = latents + noise * torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)).to(
            device
        )
    decoded = []
    for part in latents.split(128):
        decoded += decode(decoder, tokenizer, part)
    exact = sum(d == c for d, c in zip(decoded, captions, strict=True))
    same = sum(_attributes(d) == _attributes(c) for d, c in zip(decoded, captions, strict=True))
    return {
        "samples": len(captions),
        "exact_match": exact / len(captions),
        "attributes_match": same / len(captions),
        "examples": [{"target": c, "decoded": d} for c, d in list(zip(captions, decoded, strict=True))[:4]],
    }


def _attributes(caption: str) -> tuple:
    parsed = parse_caption(caption)
    return (
        parsed.background,
        sorted((o.shape, o.colour or "", o.size or "", o.position or "") for o in parsed.objects),
    )
