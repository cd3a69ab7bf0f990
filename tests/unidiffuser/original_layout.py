"""Tiny checkpoints in thu-ml's ORIGINAL key layout, and straightforward reference forwards over those keys.

The references are written from thu-ml's ``libs/uvit_multi_post_ln{,_v1}.py``, ``libs/caption_decoder.py``
and the LDM ``Encoder``/``Decoder`` of ``libs/autoencoder.py``, reading the original tensor names directly.
They share no code with ``unidiffuser.convert``, so a wrong key mapping shows up as a numeric mismatch.
Also here: tiny local stand-ins for the openai CLIP and gpt2 hub folders the converter reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

StateDict = dict[str, torch.Tensor]


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> StateDict:
    """Random tensors; norm weights near 1 and biases small but non-zero so every tensor matters."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if "norm" in key and key.endswith(".weight"):
            out[key] = 1.0 + 0.1 * noise
        elif key.endswith(".bias"):
            out[key] = 0.05 * noise
        elif key in ("pos_embed", "pos_embed_token", "token_embedding.weight"):
            out[key] = 0.5 * noise
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            out[key] = noise / math.sqrt(fan_in)
    return out


# ---------------------------------------------------------------------------------------------- U-ViT


def make_uvit_state_dict(
    version: int,
    *,
    embed_dim: int = 32,
    depth: int = 2,
    patch_size: int = 2,
    in_chans: int = 4,
    img_size: int = 8,
    text_dim: int = 8,
    clip_img_dim: int = 16,
    num_text_tokens: int = 77,
    qkv_bias: bool = False,
    mlp_time_embed: bool = False,
    seed: int = 0,
) -> StateDict:
    """A random ``UViT(...)`` state dict with thu-ml's parameter names (depth // 2 in and out blocks + mid)."""
    d = embed_dim
    num_patches = (img_size // patch_size) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (d, in_chans, patch_size, patch_size),
        "patch_embed.proj.bias": (d,),
        "text_embed.weight": (d, text_dim),
        "text_embed.bias": (d,),
        "text_out.weight": (text_dim, d),
        "text_out.bias": (text_dim,),
        "clip_img_embed.weight": (d, clip_img_dim),
        "clip_img_embed.bias": (d,),
        "clip_img_out.weight": (clip_img_dim, d),
        "clip_img_out.bias": (clip_img_dim,),
        "pos_embed": (1, 1 + 1 + num_text_tokens + 1 + num_patches, d),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "decoder_pred.weight": (patch_size**2 * in_chans, d),
        "decoder_pred.bias": (patch_size**2 * in_chans,),
    }
    if mlp_time_embed:
        for kind in ("img", "text"):
            shapes |= {
                f"time_{kind}_embed.0.weight": (4 * d, d),
                f"time_{kind}_embed.0.bias": (4 * d,),
                f"time_{kind}_embed.2.weight": (d, 4 * d),
                f"time_{kind}_embed.2.bias": (d,),
            }

    def block(prefix: str, skip: bool) -> None:
        if skip:
            shapes.update({f"{prefix}.norm1.weight": (d,), f"{prefix}.norm1.bias": (d,)})
            shapes.update({f"{prefix}.skip_linear.weight": (d, 2 * d), f"{prefix}.skip_linear.bias": (d,)})
        shapes[f"{prefix}.attn.qkv.weight"] = (3 * d, d)
        if qkv_bias:
            shapes[f"{prefix}.attn.qkv.bias"] = (3 * d,)
        shapes.update({f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,)})
        for norm in ("norm2", "norm3"):
            shapes.update({f"{prefix}.{norm}.weight": (d,), f"{prefix}.{norm}.bias": (d,)})
        shapes.update({f"{prefix}.mlp.fc1.weight": (4 * d, d), f"{prefix}.mlp.fc1.bias": (4 * d,)})
        shapes.update({f"{prefix}.mlp.fc2.weight": (d, 4 * d), f"{prefix}.mlp.fc2.bias": (d,)})

    for i in range(depth // 2):
        block(f"in_blocks.{i}", skip=False)
    block("mid_block", skip=False)
    for i in range(depth // 2):
        block(f"out_blocks.{i}", skip=True)
    if version == 1:
        shapes |= {"token_embedding.weight": (2, d), "pos_embed_token": (1, 1, d)}
    return _random_state(shapes, seed)


def _linear(sd: StateDict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _layer_norm(sd: StateDict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _attention(sd: StateDict, name: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, dim = x.shape
    qkv = _linear(sd, f"{name}.qkv", x)  # 'B L (K H D) -> K B H L D'
    q, k, v = qkv.reshape(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(batch, length, dim)
    return _linear(sd, f"{name}.proj", out)


def _uvit_block(sd: StateDict, name: str, x: torch.Tensor, heads: int, skip: torch.Tensor | None = None):
    if skip is not None:
        x = _layer_norm(sd, f"{name}.norm1", _linear(sd, f"{name}.skip_linear", torch.cat([x, skip], dim=-1)))
    x = _layer_norm(sd, f"{name}.norm2", x + _attention(sd, f"{name}.attn", x, heads))
    mlp = _linear(sd, f"{name}.mlp.fc2", F.gelu(_linear(sd, f"{name}.mlp.fc1", x)))
    return _layer_norm(sd, f"{name}.norm3", x + mlp)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _time_token(sd: StateDict, name: str, t: torch.Tensor, dim: int) -> torch.Tensor:
    emb = timestep_embedding(t, dim)
    if f"{name}.0.weight" in sd:
        emb = _linear(sd, f"{name}.2", F.silu(_linear(sd, f"{name}.0", emb)))
    return emb[:, None, :]


def uvit_reference_forward(
    sd: StateDict,
    img: torch.Tensor,
    clip_img: torch.Tensor,
    text: torch.Tensor,
    t_img: torch.Tensor,
    t_text: torch.Tensor,
    data_type: torch.Tensor | None = None,
    *,
    num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """thu-ml ``UViT.forward`` over the original keys (v1 when ``data_type`` is given)."""
    dim = sd["pos_embed"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    channels = sd["patch_embed.proj.weight"].shape[1]
    patches = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    patches = patches.flatten(2).transpose(1, 2)
    tokens = [_time_token(sd, "time_img_embed", t_img, dim), _time_token(sd, "time_text_embed", t_text, dim)]
    pos_embed = sd["pos_embed"]
    if data_type is not None:
        tokens.append(F.embedding(data_type, sd["token_embedding.weight"])[:, None, :])
        pos_embed = torch.cat([pos_embed[:, :2], sd["pos_embed_token"], pos_embed[:, 2:]], dim=1)
    text_tokens = _linear(sd, "text_embed", text)
    tokens += [text_tokens, _linear(sd, "clip_img_embed", clip_img), patches]
    x = torch.cat(tokens, dim=1) + pos_embed

    n_side = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    skips = []
    for i in range(n_side):
        x = _uvit_block(sd, f"in_blocks.{i}", x, num_heads)
        skips.append(x)
    x = _uvit_block(sd, "mid_block", x, num_heads)
    for i in range(n_side):
        x = _uvit_block(sd, f"out_blocks.{i}", x, num_heads, skip=skips.pop())
    x = _layer_norm(sd, "norm", x)

    n_text, n_img = text_tokens.shape[1], patches.shape[1]
    x = x[:, len(tokens) - 3 :]  # drop the time (and data-type) tokens
    text_out, clip_out, img_out = x.split((n_text, 1, n_img), dim=1)
    img_out = _linear(sd, "decoder_pred", img_out)
    side = int(n_img**0.5)  # 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'
    img_out = img_out.reshape(-1, side, side, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    img_out = img_out.reshape(-1, channels, side * patch, side * patch)
    return img_out, _linear(sd, "clip_img_out", clip_out), _linear(sd, "text_out", text_out)


# ------------------------------------------------------------------------------------ caption decoder


class OriginalCaptionModel(nn.Module):
    """thu-ml ``ClipCaptionModel`` (torch): ``gpt`` (GPT2LMHeadModel) + ``encode_prefix`` / ``decode_prefix``."""

    def __init__(self, gpt_config: GPT2Config, prefix_inner_dim: int, hidden_dim: int):
        super().__init__()
        self.gpt = GPT2LMHeadModel(gpt_config)
        self.encode_prefix = nn.Linear(prefix_inner_dim, hidden_dim)
        self.decode_prefix = nn.Linear(hidden_dim, gpt_config.n_embd)

    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding_text = self.gpt.transformer.wte(tokens)
        hidden = self.encode_prefix(prefix)
        embedding_cat = torch.cat((self.decode_prefix(hidden), embedding_text), dim=1)
        return self.gpt(inputs_embeds=embedding_cat).logits, hidden


def make_caption_model(
    *,
    vocab_size: int = 300,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    n_positions: int = 160,
    prefix_inner_dim: int = 32,
    hidden_dim: int = 8,
    seed: int = 0,
) -> OriginalCaptionModel:
    """A tiny caption decoder with a tied lm_head, like GPT-2 after ``resize_token_embeddings``."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        activation_function="gelu_new",
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )
    model = OriginalCaptionModel(config, prefix_inner_dim, hidden_dim).eval()
    assert model.gpt.lm_head.weight is model.gpt.transformer.wte.weight
    return model


def caption_model_checkpoint(model: OriginalCaptionModel, *, clip_keys: bool = False) -> StateDict:
    """The state dict as thu-ml saved it: DDP ``module.`` prefix, tied lm_head, legacy attention buffers;
    ``clip_keys`` adds a training-time ``clip_*`` module, which thu-ml's loader tolerates and skips."""
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    if clip_keys:
        sd["module.clip_project.weight"] = torch.randn(8, model.gpt.config.n_embd)
        sd["module.clip_project.bias"] = torch.zeros(8)
    n_pos = model.gpt.config.n_positions
    for i in range(model.gpt.config.n_layer):
        sd[f"module.gpt.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(
            1, 1, n_pos, n_pos
        )
        sd[f"module.gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return sd


# ------------------------------------------------------------------------------------------------ VAE


def make_ldm_vae_state_dict(
    *,
    ch: int = 32,
    ch_mult: tuple[int, ...] = (1, 2),
    num_res_blocks: int = 1,
    z_channels: int = 4,
    in_channels: int = 3,
    out_ch: int = 3,
    seed: int = 0,
) -> StateDict:
    """A random LDM ``AutoencoderKL`` (Encoder, Decoder, quant convs) state dict, no attention in the levels."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        shapes.update({f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)})

    def norm(name: str, c: int) -> None:
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,)})

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def mid(prefix: str, c: int) -> None:
        resnet(f"{prefix}.mid.block_1", c, c)
        norm(f"{prefix}.mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.mid.attn_1.{proj}", c, c, 1)
        resnet(f"{prefix}.mid.block_2", c, c)

    levels = len(ch_mult)
    conv("encoder.conv_in", in_channels, ch, 3)
    block_in = ch
    for i, mult in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * mult)
            block_in = ch * mult
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, 2 * z_channels, 3)
    conv("quant_conv", 2 * z_channels, 2 * z_channels, 1)
    conv("post_quant_conv", z_channels, z_channels, 1)
    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", z_channels, block_in, 3)
    mid("decoder", block_in)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, out_ch, 3)
    return _random_state(shapes, seed)


def _conv(
    sd: StateDict, name: str, x: torch.Tensor, stride: int = 1, padding: int | None = None
) -> torch.Tensor:
    weight = sd[f"{name}.weight"]
    pad = weight.shape[-1] // 2 if padding is None else padding
    return F.conv2d(x, weight, sd[f"{name}.bias"], stride=stride, padding=pad)


def _group_norm(sd: StateDict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.group_norm(x, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _resnet(sd: StateDict, name: str, x: torch.Tensor) -> torch.Tensor:
    h = _conv(sd, f"{name}.conv1", F.silu(_group_norm(sd, f"{name}.norm1", x)))
    h = _conv(sd, f"{name}.conv2", F.silu(_group_norm(sd, f"{name}.norm2", h)))
    if f"{name}.nin_shortcut.weight" in sd:
        x = _conv(sd, f"{name}.nin_shortcut", x)
    return x + h


def _attn_block(sd: StateDict, name: str, x: torch.Tensor) -> torch.Tensor:
    h = _group_norm(sd, f"{name}.norm", x)
    q, k, v = (_conv(sd, f"{name}.{p}", h) for p in ("q", "k", "v"))
    b, c, height, width = q.shape
    weights = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c**-0.5
    weights = weights.softmax(dim=2)
    h = torch.bmm(v.reshape(b, c, -1), weights.permute(0, 2, 1)).reshape(b, c, height, width)
    return x + _conv(sd, f"{name}.proj_out", h)


def _mid(sd: StateDict, prefix: str, h: torch.Tensor) -> torch.Tensor:
    h = _resnet(sd, f"{prefix}.mid.block_1", h)
    h = _attn_block(sd, f"{prefix}.mid.attn_1", h)
    return _resnet(sd, f"{prefix}.mid.block_2", h)


def _count(sd: StateDict, prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def ldm_vae_encode(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
    """LDM ``Encoder`` + ``quant_conv``: the posterior moments (mean, logvar) stacked on channels."""
    levels, blocks = _count(sd, "encoder.down."), _count(sd, "encoder.down.0.block.")
    h = _conv(sd, "encoder.conv_in", x)
    for i in range(levels):
        for j in range(blocks):
            h = _resnet(sd, f"encoder.down.{i}.block.{j}", h)
        if i != levels - 1:
            h = _conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    h = _mid(sd, "encoder", h)
    h = _conv(sd, "encoder.conv_out", F.silu(_group_norm(sd, "encoder.norm_out", h)))
    return _conv(sd, "quant_conv", h)


def ldm_vae_decode(sd: StateDict, z: torch.Tensor) -> torch.Tensor:
    """``post_quant_conv`` + LDM ``Decoder``."""
    levels, blocks = _count(sd, "decoder.up."), _count(sd, "decoder.up.0.block.")
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", z))
    h = _mid(sd, "decoder", h)
    for i in reversed(range(levels)):
        for j in range(blocks):
            h = _resnet(sd, f"decoder.up.{i}.block.{j}", h)
        if i != 0:
            h = _conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "decoder.conv_out", F.silu(_group_norm(sd, "decoder.norm_out", h)))


# ------------------------------------------------------------------- tiny stand-ins for hub folders


def byte_level_alphabet() -> list[str]:
    """GPT-2 / CLIP ``bytes_to_unicode`` characters, one per byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_gpt2_tokenizer_folder(folder: Path) -> int:
    """``vocab.json`` + ``merges.txt`` of a tiny byte-level GPT-2 BPE; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    merges = ["Ġ t", "h e", "Ġt he", "a t"]
    tokens = byte_level_alphabet() + ["".join(m.split()) for m in merges] + ["<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(tokens)


def _write_clip_tokenizer(folder: Path) -> CLIPTokenizer:
    chars = byte_level_alphabet()
    merges = ["t h", "th e</w>", "a t</w>"]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_clip_folder(folder: Path, *, text_hidden: int, projection_dim: int, seed: int = 0) -> None:
    """A tiny ``CLIPModel`` folder shaped like openai/clip-vit-*: weights, tokenizer, preprocessor config."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _write_clip_tokenizer(folder)
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": text_hidden,
        "intermediate_size": 2 * text_hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "projection_dim": projection_dim,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": projection_dim,
    }
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
