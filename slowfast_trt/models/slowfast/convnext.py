"""ConvNeXt vision tower (upstream: timm ``convnext_xxlarge`` at 576 px, last stage output).

| input  | shape                 | dtype | meaning                               |
|--------|-----------------------|-------|---------------------------------------|
| pixels | (N, 3, S, S)          | T     | CLIP-normalised frames, S = 576       |
| -> out | (N, (S/32)^2, C_last) | T     | last-stage feature map, row-major     |

The architecture (stage depths, widths, kernel size, MLP ratio, stem patch) is read from the
checkpoint's tensor shapes by :func:`ConvNeXtSpec.from_shapes`, so the real XXLarge tower
(depths 3/4/30/3, dims 384/768/1536/3072) and tiny test towers load through the same code.
Upstream ignores ``mm_vision_select_layer`` and takes the last stage; the classifier head
weights in the checkpoint are unused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# timm convnext_xxlarge passes norm_eps=1e-5 to every LayerNorm.
CONVNEXT_NORM_EPS = 1e-5
_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight$")


@dataclass(frozen=True)
class ConvNeXtSpec:
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    kernel_size: int
    mlp_ratio: int
    patch_size: int
    layer_scale: bool

    @property
    def stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dims) - 1)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], source: str = "checkpoint") -> "ConvNeXtSpec":
        """Derive the tower from upstream-relative names (``stem.0.weight``, ``stages.S.blocks.B...``)."""
        if "stem.0.weight" not in shapes:
            raise ValueError(f"{source}: vision tower tensor 'stem.0.weight' not found")
        depth_of: dict[int, int] = {}
        for name in shapes:
            match = _BLOCK.match(name)
            if match:
                stage, block = int(match.group(1)), int(match.group(2))
                depth_of[stage] = max(depth_of.get(stage, 0), block + 1)
        if not depth_of or sorted(depth_of) != list(range(len(depth_of))):
            raise ValueError(f"{source}: vision tower stages are missing or not numbered 0..N-1: {sorted(depth_of)}")
        stages = len(depth_of)
        dims = tuple(int(shapes[f"stages.{s}.blocks.0.conv_dw.weight"][0]) for s in range(stages))
        stem = shapes["stem.0.weight"]
        fc1 = shapes["stages.0.blocks.0.mlp.fc1.weight"]
        return cls(
            depths=tuple(depth_of[s] for s in range(stages)),
            dims=dims,
            kernel_size=int(shapes["stages.0.blocks.0.conv_dw.weight"][-1]),
            mlp_ratio=int(fc1[0]) // dims[0],
            patch_size=int(stem[-1]),
            layer_scale="stages.0.blocks.0.weight" in shapes,
        )


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (channels-last in memory: both permutes are views)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _fused_cpu_linear(x: torch.Tensor) -> bool:
    """oneDNN's fused linear (bias and GELU applied as the product is written) for float32 CPU
    inference. ``F.linear`` first copies the bias into its output and the GELU is another pass:
    at the tower's 144x144 stage-0 grid these passes over the 4x-wide hidden activations were
    half of the tower's time (``docs/performance.md``). Same bits as the unfused ops (tested)."""
    return (
        _LINEAR_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
    )


_LINEAR_POINTWISE = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_cpu_linear(x):
            hidden = _LINEAR_POINTWISE(x, self.fc1.weight, self.fc1.bias, "gelu", [], "none")
            return _LINEAR_POINTWISE(hidden, self.fc2.weight, self.fc2.bias, "none", [], "")
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, spec: ConvNeXtSpec):
        super().__init__()
        k = spec.kernel_size
        self.conv_dw = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=CONVNEXT_NORM_EPS)
        self.mlp = Mlp(dim, spec.mlp_ratio * dim)
        self.layer_scale = nn.Parameter(torch.ones(dim)) if spec.layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x is channels-last, so the NHWC view is contiguous: no copy for the norm and the MLP.
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        if self.layer_scale is not None:
            y = y.mul_(self.layer_scale)
        return y.permute(0, 3, 1, 2).add_(x)  # y is this block's own buffer: x + y in place


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, spec: ConvNeXtSpec, downsample: bool):
        super().__init__()
        self.downsample_norm = LayerNorm2d(in_dim, eps=CONVNEXT_NORM_EPS) if downsample else None
        self.downsample_conv = nn.Conv2d(in_dim, dim, 2, stride=2) if downsample else None
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, spec) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample_conv is not None:
            x = self.downsample_conv(self.downsample_norm(x))
        for block in self.blocks:
            x = block(x)
        return x


class ConvNeXtTower(nn.Module):
    """Stem + stages; returns the last stage as (N, H*W, C) tokens."""

    def __init__(self, spec: ConvNeXtSpec):
        super().__init__()
        self.spec = spec
        self.stem_conv = nn.Conv2d(3, spec.dims[0], spec.patch_size, stride=spec.patch_size)
        self.stem_norm = LayerNorm2d(spec.dims[0], eps=CONVNEXT_NORM_EPS)
        stages, in_dim = [], spec.dims[0]
        for s, (dim, depth) in enumerate(zip(spec.dims, spec.depths)):
            stages.append(ConvNeXtStage(in_dim, dim, depth, spec, downsample=s > 0))
            in_dim = dim
        self.stages = nn.ModuleList(stages)

    @property
    def out_dim(self) -> int:
        return self.spec.dims[-1]

    def forward(self, pixels: torch.Tensor, normalise: tuple[Sequence[float], Sequence[float]] | None = None) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels, any memory format -> (N, (S/32)^2, C_last); or, with
        ``normalise=(mean, std)``, uint8 (N, S, S, 3) frames, the pixel normalisation
        ``(x / 255 - mean) / std`` folded into the stem convolution.

        The tower runs channels-last (NHWC in memory, as timm's and oneDNN's fast path): the
        convolutions take and give NHWC, and the LayerNorms and MLPs read the same memory
        as contiguous rows, so no block copies its activations to change layout.

        Folded stem: the stem is a ``patch x patch`` convolution of stride ``patch`` with no
        padding, so every output sees whole input patches and the fold is exact in real
        arithmetic (float32 rounding differs from normalising first by ~1e-6 relative): the
        frames go in as float32 values 0..255, and no pass over the frames normalises them.
        The fold is recomputed per call (48 weights per output channel) so that an exported
        graph derives it from the stem's own weights (ONNX Runtime and TensorRT fold those
        constant ops at load). That stem runs in float32 for every model dtype (3 input
        channels: cheap); its output is cast to the model dtype."""
        if normalise is None:
            x = self.stem_conv(pixels.contiguous(memory_format=torch.channels_last))
        else:
            weight, bias = fold_pixel_normalisation(self.stem_conv, *normalise)
            x = pixels.to(torch.float32).permute(0, 3, 1, 2)  # NHWC memory: a channels-last view
            x = F.conv2d(x, weight, bias, stride=self.spec.patch_size).to(self.stem_conv.weight.dtype)
            x = x.contiguous(memory_format=torch.channels_last)
        return self._stages(self.stem_norm(x))

    def _stages(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x.flatten(2).transpose(1, 2)


def fold_pixel_normalisation(stem: nn.Conv2d, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (weight, bias) of ``stem`` applied to raw 0..255 pixels: for input channel c,
    ``w * (x / 255 - m) / s = (w / (255 s)) * x - w * m / s``; the constant terms go to the bias."""
    weight = stem.weight.to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32, device=weight.device)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=weight.device)[None, :, None, None]
    bias = stem.bias.to(torch.float32) if stem.bias is not None else torch.zeros(weight.shape[0], device=weight.device)
    return weight / (255.0 * s), bias - (weight * m / s).sum(dim=(1, 2, 3))
