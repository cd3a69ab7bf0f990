"""Part (b): a small CLIP (``transformers.CLIPModel``: text and vision towers) trained contrastively.

It becomes three things in the checkpoint: UniDiffuser's text encoder (``text_encoder/``: its hidden states
feed the caption decoder's ``encode_prefix``), its image encoder (``image_encoder/``: the projected image
embedding is the U-ViT's CLIP image input) and the pipeline's CLIP scorer (``clip/``).

Prompts are encoded as the engine encodes them: padded to the full context with the end-of-text token, no
attention mask (the text tower is causal, so padding never changes the pooled embedding).

Besides CLIP's loss on the pooled (end-of-text) embedding, the same contrastive loss is applied to the last
position of the context (always padding, which attends to the whole caption): UniDiffuser reads every position
of the text encoder's hidden states, and this gives it a summary of the caption at a fixed position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from shapes.common import Meter, autocast, batches, images_to_clip, lr_at, set_lr


@dataclass
class CLIPTrainConfig:
    hidden_size: int = 128
    intermediate_size: int = 256
    text_layers: int = 2
    vision_layers: int = 3
    heads: int = 4
    projection_dim: int = 32
    patch_size: int = 8
    steps: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    summary_loss_weight: float = 1.0  # the contrastive loss on the last context position
    amp: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def build_clip(cfg: CLIPTrainConfig, tokenizer: CLIPTokenizer, resolution: int) -> CLIPModel:
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=cfg.projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        image_size=resolution,
        patch_size=cfg.patch_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.heads,
        projection_dim=cfg.projection_dim,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.projection_dim
    )
    return CLIPModel(config)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids (N, context) exactly as the engine makes them (max-length padding, truncation)."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip


def _embeds(
    model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, summary: bool = False
) -> tuple[torch.Tensor, ...]:
    """Normalised (image, text) embeddings; with ``summary`` also the projected last context position."""
    image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    out = model.text_model(input_ids=ids)
    text = model.text_projection(out.pooler_output)
    embeds: tuple[torch.Tensor, ...] = (F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1))
    if summary:
        last = model.text_projection(out.last_hidden_state[:, -1])
        embeds += (F.normalize(last.float(), dim=-1),)
    return embeds


def _contrastive(
    scale: torch.Tensor, image: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = scale * image @ text.T
    labels = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2, logits


def train_clip(
    images,
    captions: list[str],
    tokenizer: CLIPTokenizer,
    cfg: CLIPTrainConfig,
    device: torch.device,
    generator: torch.Generator,
    val: tuple | None = None,
) -> tuple[CLIPModel, dict]:
    """Contrastive training on uint8 images (N, H, W, 3) and their captions; ``val`` = (images, captions)."""
    pixels = images_to_clip(images)
    ids = tokenize(tokenizer, captions)
    model = build_clip(cfg, tokenizer, pixels.shape[-1]).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    meter = Meter("clip", cfg.steps)
    for step, idx in enumerate(batches(len(ids), cfg.batch_size, cfg.steps, generator)):
        set_lr(optimizer, lr_at(step, cfg.steps, cfg.lr, cfg.warmup))
        with autocast(device, cfg.amp):
            image, text, last = _embeds(model, pixels[idx].to(device), ids[idx].to(device), summary=True)
        scale = model.logit_scale.exp().clamp(max=100.0)
        clip_loss, logits = _contrastive(scale, image, text)
        summary_loss, _ = _contrastive(scale, image, last)
        loss = clip_loss + cfg.summary_loss_weight * summary_loss
        labels = torch.arange(len(idx), device=device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        accuracy = (logits.argmax(1) == labels).float().mean()
        meter.add(step, loss=clip_loss.item(), summary_loss=summary_loss.item(), accuracy=accuracy.item())
    model.eval()
    report = {
        "config": cfg.to_dict(),
        "curve": meter.curve,
        "final": meter.final(),
        "seconds": round(meter.elapsed, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "logit_scale": float(model.logit_scale.detach().exp()),
    }
    if val is not None:
        report["val"] = evaluate_clip(model, tokenizer, val[0], val[1], device)
    return model, report


@torch.no_grad()
def clip_scores(
    model: CLIPModel, tokenizer: CLIPTokenizer, images, captions: list[str], device
) -> torch.Tensor:
    """Cosine similarity matrix (images x captions)."""
    model.eval()
    image, text = [], []
    pixels, ids = images_to_clip(images), tokenize(tokenizer, captions)
    for start in range(0, len(ids), 256):
        i, t = _embeds(model, pixels[start : start + 256].to(device), ids[start : start + 256].to(device))
        image.append(i.cpu())
        text.append(t.cpu())
    return torch.cat(image) @ torch.cat(text).T


def roc_auc(positive, negative) -> float:
    """Area under the ROC curve: the probability that a positive scores above a negative (ties half)."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


@torch.no_grad()
def evaluate_clip(model: CLIPModel, tokenizer: CLIPTokenizer, images, captions: list[str], device) -> dict:
    """Retrieval accuracy (image -> its caption among all) and the matched-vs-shuffled ROC AUC."""
    sims = clip_scores(model, tokenizer, images, captions, device)
    n = len(captions)
    matched = sims.diagonal()
    shuffled = sims[torch.arange(n), (torch.arange(n) + n // 2) % n]
    return {
        "samples": n,
        "image_to_text_top1": float((sims.argmax(1) == torch.arange(n)).float().mean()),
        "auc_matched_vs_shuffled": roc_auc(matched, shuffled),
    }


def split_towers(
    model: CLIPModel, image_scale: float = 1.0
) -> tuple[CLIPTextModel, CLIPVisionModelWithProjection]:
    """UniDiffuser's text encoder and image encoder, with the same weights as the CLIP towers; the image
    projection is multiplied by ``image_scale`` (so the U-ViT's CLIP image input has about unit variance)."""
    text = CLIPTextModel(model.config.text_config)
    text.load_state_dict(model.text_model.state_dict(), strict=True)
    vision = CLIPVisionModelWithProjection(model.config.vision_config)
    vision.vision_model.load_state_dict(model.vision_model.state_dict(), strict=True)
    with torch.no_grad():
        vision.visual_projection.weight.copy_(model.visual_projection.weight * image_scale)
    return text.eval(), vision.eval()


@torch.no_grad()
def image_embeddings(
    vision: CLIPVisionModelWithProjection, images, device, batch_size: int = 256
) -> torch.Tensor:
    """Projected image embeddings (N, 1, projection_dim), as the engine computes them."""
    pixels = images_to_clip(images)
    out = [vision(pixel_values=p.to(device)).image_embeds.float().cpu() for p in pixels.split(batch_size)]
    return torch.cat(out).unsqueeze(1)


@torch.no_grad()
def text_hidden_states(
    text: CLIPTextModel, tokenizer: CLIPTokenizer, captions: list[str], device, batch_size: int = 512
) -> torch.Tensor:
    """Last hidden states (N, context, hidden) of the text encoder, as the engine computes them."""
    ids = tokenize(tokenizer, captions)
    return torch.cat([text(input_ids=i.to(device))[0].float().cpu() for i in ids.split(batch_size)])
