"""The U-ViT network of UniDiffuser: one transformer over [t_img, t_text, (data_type), text, clip_img, patches].

Parameter names follow the diffusers checkpoint layout (``unet/`` of thu-ml/unidiffuser-v1), so a published
``diffusion_pytorch_model.safetensors`` loads with ``load_state_dict(strict=True)``. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``; ``fuse_qkv`` merges q/k/v into one matmul for inference.
Timesteps are per sample (shape ``[B]``), which is what lets classifier-free guidance run its conditional and
unconditional branches in one batched forward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_ACTIVATIONS = ("gelu", "gelu-approximate", "geglu")


@dataclass(frozen=True)
class UViTConfig:
    """The subset of diffusers' ``UniDiffuserModel`` config that the network uses (other keys are ignored)."""

    text_dim: int = 64
    clip_img_dim: int = 512
    num_text_tokens: int = 77
    num_attention_heads: int = 24
    attention_head_dim: int = 64
    in_channels: int = 4
    out_channels: int = 4
    num_layers: int = 30  # thu-ml's depth: num_layers // 2 in blocks, a mid block, num_layers // 2 out blocks
    sample_size: int = 64
    patch_size: int = 2
    activation_fn: str = "gelu"
    attention_bias: bool = False
    block_type: str = "unidiffuser"
    pre_layer_norm: bool = False
    use_timestep_embedding: bool = False
    use_patch_pos_embed: bool = False
    use_data_type_embedding: bool = False
    norm_elementwise_affine: bool = True

    @classmethod
    def from_dict(cls, config: dict) -> UViTConfig:
        """Build from a diffusers ``config.json`` dict; rejects settings this network does not implement."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known and v is not None}
        cfg = cls(**values)
        problems = []
        if cfg.block_type != "unidiffuser":
            problems.append(f"block_type={cfg.block_type!r} (only 'unidiffuser' is supported)")
        if cfg.pre_layer_norm:
            problems.append("pre_layer_norm=True (UniDiffuser checkpoints are post-LayerNorm)")
        if cfg.use_patch_pos_embed:
            problems.append("use_patch_pos_embed=True")
        if cfg.activation_fn not in SUPPORTED_ACTIVATIONS:
            problems.append(f"activation_fn={cfg.activation_fn!r} (supported: {SUPPORTED_ACTIVATIONS})")
        if cfg.num_layers < 0:
            problems.append(f"num_layers={cfg.num_layers} (must be >= 0)")
        if problems:
            raise ValueError("unsupported U-ViT config: " + "; ".join(problems))
        return cfg

    def to_dict(self) -> dict:
        """The diffusers ``config.json`` content for this network."""
        return {"_class_name": "UniDiffuserModel", **asdict(self), "dropout": 0.0, "ff_final_dropout": True}

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def num_blocks(self) -> int:
        """num_layers // 2 in blocks, one mid block, num_layers // 2 out blocks (diffusers' convention)."""
        return 2 * (self.num_layers // 2) + 1

    @property
    def num_patches(self) -> int:
        return (self.sample_size // self.patch_size) ** 2


def row_stable_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for inputs with one row per record (CLIP token, timestep MLP).

    On CPU, BLAS picks different kernels for different row counts (a single row takes a matrix-vector path),
    so a record's result would change in the last bits with the batch size. There this computes the same
    product as a broadcast multiply and sum, whose reduction order depends only on the feature size.
    """
    if x.device.type != "cpu":
        return layer(x)
    out = (x.unsqueeze(-2) * layer.weight).sum(-1)
    return out + layer.bias if layer.bias is not None else out


def sinusoidal_timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Cos-first sinusoidal embedding of per-sample timesteps (diffusers ``Timesteps(flip_sin_to_cos=True)``)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """Optional learned timestep embedding (``use_timestep_embedding``): linear, SiLU, linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, 4 * dim)
        self.linear_2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_stable_linear(self.linear_2, F.silu(row_stable_linear(self.linear_1, x)))


class PatchEmbed(nn.Module):
    """Latent image (B, C, H, W) to patch tokens (B, N, D).

    The weights are a strided convolution's (checkpoint layout); the computation is the equivalent matmul
    over unfolded patches, whose per-row results do not depend on the batch size (CPU convolution kernels do).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.patch_size
        patches = x.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, (height // p) * (width // p), channels * p * p)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention with separate (checkpoint layout) or fused (inference) q/k/v projections."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        self.to_qkv: nn.Linear | None = None

    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """Replace to_q/to_k/to_v by one linear layer (same numbers, one matmul)."""
        if self.to_qkv is not None:
            return
        q, k, v = self.to_q, self.to_k, self.to_v
        fused = nn.Linear(q.in_features, 3 * q.out_features, bias=q.bias is not None)
        fused = fused.to(device=q.weight.device, dtype=q.weight.dtype)
        fused.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        if q.bias is not None:
            fused.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.to_qkv = fused
        del self.to_q, self.to_k, self.to_v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        if self.to_qkv is not None:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        q, k, v = (t.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim)
        return self.to_out[0](out)


class FeedForward(nn.Module):
    """Transformer MLP with diffusers' ``ff.net.0.proj`` / ``ff.net.2`` parameter names."""

    def __init__(self, dim: int, activation: str):
        super().__init__()
        inner = 4 * dim
        self.activation = activation
        proj_out = 2 * inner if activation == "geglu" else inner
        self.net = nn.ModuleList([_Proj(dim, proj_out), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = cast(_Proj, self.net[0]).proj(x)
        if self.activation == "geglu":
            h, gate = h.chunk(2, dim=-1)
            h = h * F.gelu(gate)
        elif self.activation == "gelu-approximate":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.gelu(h)
        return self.net[2](h)


class _Proj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)


class Block(nn.Module):
    """Post-LayerNorm transformer block with the norms on the residual path (thu-ml's uvit_multi_post_ln)."""

    def __init__(self, cfg: UViTConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.attention_head_dim, cfg.attention_bias)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=cfg.norm_elementwise_affine)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=cfg.norm_elementwise_affine)
        self.ff = FeedForward(dim, cfg.activation_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn1(x))
        return self.norm3(x + self.ff(x))


class SkipBlock(nn.Module):
    """Long skip connection of the U-ViT: concat, linear, LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(self.skip_linear(torch.cat([x, skip], dim=-1)))


class _Transformer(nn.Module):
    """The U-shaped stack: in blocks, a mid block, out blocks fed by long skips (``transformer.*`` keys)."""

    def __init__(self, cfg: UViTConfig):
        super().__init__()
        half = cfg.num_layers // 2
        # Present in every published checkpoint but unused by UniDiffuser (the outer model embeds patches).
        self.pos_embed = PatchEmbed(cfg.in_channels, cfg.inner_dim, cfg.patch_size)
        self.transformer_in_blocks = nn.ModuleList([Block(cfg) for _ in range(half)])
        self.transformer_mid_block = Block(cfg)
        self.transformer_out_blocks = nn.ModuleList(
            [nn.ModuleDict({"skip": SkipBlock(cfg.inner_dim), "block": Block(cfg)}) for _ in range(half)]
        )
        self.norm_out = nn.LayerNorm(cfg.inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.transformer_in_blocks:
            x = block(x)
            skips.append(x)
        x = self.transformer_mid_block(x)
        for out in self.transformer_out_blocks:
            block, skip = cast(nn.ModuleDict, out)["block"], cast(nn.ModuleDict, out)["skip"]
            x = block(skip(x, skips.pop()))
        return self.norm_out(x)


class UViT(nn.Module):
    """UniDiffuser's noise-prediction network for (VAE latent, CLIP image embedding, text latent)."""

    def __init__(self, cfg: UViTConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.inner_dim
        self.vae_img_in = PatchEmbed(cfg.in_channels, dim, cfg.patch_size)
        self.clip_img_in = nn.Linear(cfg.clip_img_dim, dim)
        self.text_in = nn.Linear(cfg.text_dim, dim)
        self.timestep_img_embed = TimestepMLP(dim) if cfg.use_timestep_embedding else nn.Identity()
        self.timestep_text_embed = TimestepMLP(dim) if cfg.use_timestep_embedding else nn.Identity()
        num_tokens = 1 + 1 + cfg.num_text_tokens + 1 + cfg.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        if cfg.use_data_type_embedding:
            self.data_type_token_embedding = nn.Embedding(2, dim)
            self.data_type_pos_embed_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = _Transformer(cfg)
        self.vae_img_out = nn.Linear(dim, cfg.patch_size**2 * cfg.out_channels)
        self.clip_img_out = nn.Linear(dim, cfg.clip_img_dim)
        self.text_out = nn.Linear(dim, cfg.text_dim)

    def fuse_qkv(self) -> None:
        """Fuse every attention's q/k/v projections (inference only; do before casting or compiling)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fuse_qkv()

    def _time_token(self, t: torch.Tensor, embed: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        return embed(sinusoidal_timestep_embedding(t, self.config.inner_dim).to(dtype)).unsqueeze(1)

    def forward(
        self,
        img_vae: torch.Tensor,
        img_clip: torch.Tensor,
        text: torch.Tensor,
        t_img: torch.Tensor,
        t_text: torch.Tensor,
        data_type: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict the noise of each modality.

        Args:
            img_vae: (B, C, H, W) VAE latents. img_clip: (B, 1, clip_img_dim). text: (B, L, text_dim).
            t_img, t_text: (B,) per-sample timesteps in [0, num_train_timesteps].
            data_type: (B,) ints 0/1, only for v1 checkpoints (``use_data_type_embedding``).
        """
        cfg = self.config
        batch = img_vae.shape[0]
        dtype = self.pos_embed.dtype
        patches = self.vae_img_in(img_vae)
        tokens = [
            self._time_token(t_img.expand(batch), self.timestep_img_embed, dtype),
            self._time_token(t_text.expand(batch), self.timestep_text_embed, dtype),
        ]
        pos: torch.Tensor = self.pos_embed
        if cfg.use_data_type_embedding:
            if data_type is None:
                raise ValueError("this checkpoint (v1) needs data_type (0 or 1)")
            tokens.append(self.data_type_token_embedding(data_type.expand(batch).long()).unsqueeze(1))
            pos = torch.cat([pos[:, :2], self.data_type_pos_embed_token, pos[:, 2:]], dim=1)
        tokens += [self.text_in(text), row_stable_linear(self.clip_img_in, img_clip), patches]
        x = self.transformer(torch.cat(tokens, dim=1) + pos)

        num_text, num_patches = text.shape[1], patches.shape[1]
        x = x[:, len(tokens) - 3 :]
        text_out, clip_out, vae_out = x.split((num_text, 1, num_patches), dim=1)
        clip_out = row_stable_linear(self.clip_img_out, clip_out)
        return self._unpatchify(self.vae_img_out(vae_out)), clip_out, self.text_out(text_out)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.out_channels
        side = int(x.shape[1] ** 0.5)
        x = x.reshape(-1, side, side, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(-1, c, side * p, side * p)

    def forward_flops(self, batch: int = 1) -> int:
        """Matmul FLOPs of one forward (2 per multiply-add), counted from the config; used for MFU."""
        cfg = self.config
        dim = cfg.inner_dim
        tokens = 3 + cfg.num_text_tokens + cfg.num_patches + (1 if cfg.use_data_type_embedding else 0)
        ff_in = 8 * dim if cfg.activation_fn == "geglu" else 4 * dim
        per_block = 2 * tokens * (3 * dim * dim + dim * dim + dim * ff_in + 4 * dim * dim)
        per_block += 2 * 2 * tokens * tokens * dim  # scores and weighted sum
        skips = (cfg.num_layers // 2) * 2 * tokens * 2 * dim * dim
        io = 2 * cfg.num_patches * dim * (cfg.in_channels * cfg.patch_size**2) * 2
        io += 2 * cfg.num_text_tokens * dim * cfg.text_dim * 2 + 2 * dim * cfg.clip_img_dim * 2
        return batch * (cfg.num_blocks * per_block + skips + io)
