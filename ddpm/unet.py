"""Time-conditioned U-Nets for small RGB images, built from a frozen config alone.

Two architectures, each optionally conditioned on a tissue class (``num_classes``):

* ``seed``: the tutorial paper's notebook network, layer for layer (about 0.16 M parameters).
* ``resunet``: residual blocks with GroupNorm and SiLU, the timestep added per block, optional
  self-attention at the coarsest levels (the DDPM / ADM design, scaled for 28×28 on a CPU).

The network knows nothing of the noise schedule: it maps (x_t, t[, class]) to an output of the same shape.
A conditional network has ``num_classes + 1`` learned class embeddings, the last one meaning "no class"
(classifier-free guidance, Ho & Salimans 2022); the class embedding is added to the time embedding and
starts at zero, so a conditional network initialised from unconditional weights computes exactly what
they computed until training moves it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigMixin
from .limits import ARCHITECTURES, MAX_CLASSES, check_model_config

Architecture = Literal["seed", "resunet"]


@dataclass(frozen=True)
class UNetConfig(ConfigMixin):
    architecture: Architecture = "resunet"
    image_size: int = 28
    in_channels: int = 3
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes that get self-attention
    num_heads: int = 1
    time_embed_dim: int = 128
    dropout: float = 0.0
    norm_groups: int = 8
    num_classes: int | None = None  # None: unconditional; else class labels 0..num_classes-1, num_classes = "no class"
    config_name = "model"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, got {self.architecture!r}")
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        if self.num_classes is not None and not (type(self.num_classes) is int and 1 <= self.num_classes <= MAX_CLASSES):
            raise ValueError(f"num_classes must be None (unconditional) or an integer in [1, {MAX_CLASSES}], "
                             f"got {self.num_classes!r}")
        down = 2 ** (len(self.channel_mults) - 1) if self.architecture == "resunet" else 2
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be divisible by {down} for {len(self.channel_mults)} levels")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017): [cos(t ω_i), sin(t ω_i)], ω_i = max_period^(-i/(dim/2)).

    t: (B,) integer or float timesteps -> (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ClassEmbedding(nn.Module):
    """Learned per-class vectors added to the time embedding; index ``num_classes`` is "no class".

    Zero-initialised, so the network starts out ignoring the label. Labels are (B,) indices in [0, K], or
    (B, K+1) float weights over the K+1 vectors: the weighted sum Σ_k w_k e_k, a mix of tissues
    (``editing.morph``). A one-hot row gives exactly its index's vector (it is summed with zeros, in float32).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, class_labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if class_labels is None:
            class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if class_labels.is_floating_point():
            if class_labels.ndim != 2 or class_labels.shape[1] != self.num_classes + 1:
                raise ValueError(f"class weights must be (B, {self.num_classes + 1}), one weight per class and the last "
                                 f"for \"no class\", got {tuple(class_labels.shape)}")
            weights = self.embedding.weight.float()  # not autocast: elementwise ops keep float32
            return (class_labels.float()[:, :, None] * weights[None]).sum(1)  # (B, dim)
        return self.embedding(class_labels)  # (B, dim)


def _class_embedding(config: UNetConfig, dim: int) -> ClassEmbedding | None:
    return ClassEmbedding(config.num_classes, dim) if config.num_classes is not None else None


def _add_class(emb: torch.Tensor, class_embed: ClassEmbedding | None, class_labels: torch.Tensor | None) -> torch.Tensor:
    if class_embed is None:
        if class_labels is not None:
            raise ValueError("this network is unconditional (num_classes is None): it takes no class labels")
        return emb
    return emb + class_embed(class_labels, emb.shape[0], emb.device)


class SeedUNet(nn.Module):
    """The paper's network: two levels, one skip, ReLU, time added after each level's first conv."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        c, emb = config.in_channels, config.time_embed_dim
        self.config = config
        self.time_mlp = nn.Sequential(nn.Linear(32, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        self.conv1 = nn.Conv2d(c, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 64, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.up = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv_out = nn.Conv2d(32, c, 3, padding=1)
        self.time_proj1 = nn.Linear(emb, 32)
        self.time_proj2 = nn.Linear(emb, 64)
        self.class_embed = _class_embedding(config, emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = _add_class(self.time_mlp(timestep_embedding(t, 32)), self.class_embed, class_labels)  # (B, 128)
        h1 = F.relu(self.conv1(x)) + self.time_proj1(emb)[:, :, None, None]  # (B, 32, 28, 28)
        h1 = F.relu(self.conv2(h1))
        h2 = F.relu(self.down(h1)) + self.time_proj2(emb)[:, :, None, None]  # (B, 64, 14, 14)
        h2 = F.relu(self.conv3(h2))
        u = F.relu(self.up(h2)) + h1  # skip from the first level
        u = F.relu(self.conv4(u))
        return self.conv_out(u)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (improved-diffusion's zero_module)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hgt * wid)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)  # each (B, heads, HW, C/heads), contiguous for the fused kernel
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, hgt, wid))


class ResUNet(nn.Module):
    """A residual U-Net: per level ``num_res_blocks`` blocks (+ attention), strided-conv down, nearest-up."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch, emb, g = config.base_channels, config.time_embed_dim, config.norm_groups
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_embed = _class_embedding(config, emb)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        self.down_blocks, self.down_attn, self.downsamplers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skip_channels, cur, res = [ch], ch, config.image_size
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                self.down_blocks.append(ResBlock(cur, ch * mult, emb, g, config.dropout))
                cur = ch * mult
                self.down_attn.append(AttentionBlock(cur, config.num_heads, g) if res in config.attention_resolutions else nn.Identity())
                skip_channels.append(cur)
            if level < len(config.channel_mults) - 1:
                self.downsamplers.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_channels.append(cur)
                res //= 2

        self.mid1 = ResBlock(cur, cur, emb, g, config.dropout)
        self.mid_attn = AttentionBlock(cur, config.num_heads, g)
        self.mid2 = ResBlock(cur, cur, emb, g, config.dropout)

        self.up_blocks, self.up_attn, self.upsamplers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for _ in range(config.num_res_blocks + 1):
                self.up_blocks.append(ResBlock(cur + skip_channels.pop(), ch * mult, emb, g, config.dropout))
                cur = ch * mult
                self.up_attn.append(AttentionBlock(cur, config.num_heads, g) if res in config.attention_resolutions else nn.Identity())
            if level > 0:
                self.upsamplers.append(nn.Conv2d(cur, cur, 3, padding=1))
                res *= 2
        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv2d(cur, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,) timesteps, class_labels: (B,) in [0, num_classes], (B, num_classes + 1) weights
        (``ClassEmbedding``) or None ("no class")."""
        cfg = self.config
        emb = _add_class(self.time_mlp(timestep_embedding(t, cfg.base_channels)), self.class_embed, class_labels)
        h = self.conv_in(x)
        skips = [h]
        blocks = iter(zip(self.down_blocks, self.down_attn))
        for level in range(len(cfg.channel_mults)):
            for _ in range(cfg.num_res_blocks):
                block, attn = next(blocks)
                h = attn(block(h, emb))
                skips.append(h)
            if level < len(cfg.channel_mults) - 1:
                h = self.downsamplers[level](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        blocks = iter(zip(self.up_blocks, self.up_attn))
        for i in range(len(cfg.channel_mults)):
            for _ in range(cfg.num_res_blocks + 1):
                block, attn = next(blocks)
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if i < len(cfg.channel_mults) - 1:
                h = self.upsamplers[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(config: UNetConfig) -> nn.Module:
    """The network described by ``config``, with fresh weights; a config beyond ``limits`` is refused first."""
    check_model_config(config)
    return SeedUNet(config) if config.architecture == "seed" else ResUNet(config)


def state_dict_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                        ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of ``state`` against a network's ``expected`` state dict, sorted."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    return missing, unexpected, shapes


def load_weights_from(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy ``state_dict`` into ``model``; a conditional model may take an unconditional network's weights
    (its class embedding then stays at zero, so it computes what they computed). Anything else that does
    not match is a ValueError that lists the differences."""
    own = model.state_dict()
    missing, unexpected, shapes = state_dict_mismatch(own, state_dict)
    allowed_missing = [k for k in missing if k.startswith("class_embed.")]
    if unexpected or shapes or len(allowed_missing) != len(missing):
        diff = [f"missing {k}" for k in missing if k not in allowed_missing] + [f"unexpected {k}" for k in unexpected]
        diff += [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in shapes]
        raise ValueError(f"the weights do not fit this network ({len(diff)} differences: {'; '.join(diff[:6])}"
                         f"{' …' if len(diff) > 6 else ''}); --init-from needs a checkpoint of the same architecture "
                         "(only the class embedding may be absent)")
    model.load_state_dict(state_dict, strict=not allowed_missing)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
