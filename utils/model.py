"""CustomResNet: the paper's mini ResNet for CIFAR-10 (4,997,722 parameters with the defaults).

Design, as the paper has it:
- A 3x3 stem (48 channels) keeps the full 32x32 resolution: CIFAR images are too small for
  ImageNet's 7x7/stride-2 stem and max-pool.
- Four stages of two basic blocks (conv-BN-ReLU-conv-BN + shortcut, then ReLU), channels
  [48, 96, 128, 364], strides [1, 2, 2, 2]: 32 -> 32 -> 16 -> 8 -> 4. The last stage is wide
  because the budget (< 5M) is spent where the map is smallest and cheapest.
- Shortcuts are identity where the shape is kept and a 1x1 conv + BN projection where it changes.
- Convolutions carry no bias (BatchNorm follows each one); 4x4 average pooling; dropout 0.1; linear 10.
Widths, blocks per stage and dropout are arguments so that variants stay one call away.

Initialisation: PyTorch's defaults, as the paper's code ran. Two optional steps after them, off in `paper`, draw
no random numbers (so the initialisation of every other weight is unchanged) and add no parameter:
- `zero_init_residual`: each block's last BatchNorm scale starts at 0, so each block starts as its shortcut
  (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
- `init_stem_patch_pca`: the stem's filters from the principal components of 3x3 patches of training images,
  each scaled by 1/sqrt(its variance) and used with both signs, as airbench's whitening layer (Keller Jordan,
  "94% on CIFAR-10 in 3.29 seconds", 2024); they stay trainable. utils.recipe passes the images.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_CHANNELS = (48, 96, 128, 364)
PAPER_BLOCKS = (2, 2, 2, 2)
PAPER_PARAMETERS = 4_997_722
PARAMETER_BUDGET = 5_000_000
PATCH_PCA_EPS = 5e-4          # added to each variance before 1/sqrt (airbench's): the faintest components stay finite


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus identity or 1x1-projection shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, 1)
        self.shortcut = (conv_bn(c_in, c_out, 1, stride)
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        return F.relu(out + self.shortcut(x))


class CustomResNet(nn.Module):
    def __init__(self, channels: Sequence[int] = PAPER_CHANNELS, blocks: Sequence[int] = PAPER_BLOCKS,
                 dropout: float = 0.1, num_classes: int = 10, strides: Sequence[int] | None = None):
        super().__init__()
        # The first stage keeps the resolution, every later one halves it.
        strides = tuple(strides) if strides is not None else (1,) + (2,) * (len(channels) - 1)
        if not len(channels) == len(blocks) == len(strides):
            raise ValueError(f"channels {list(channels)}, blocks {list(blocks)} and strides "
                             f"{list(strides)} must have one entry per stage")
        self.stem = nn.Sequential(conv_bn(3, channels[0], 3, 1), nn.ReLU(inplace=True))
        stages, c_in = [], channels[0]
        for c_out, n_blocks, stride in zip(channels, blocks, strides):
            layers = [BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                      for i in range(n_blocks)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        # The paper's 4x4 average pool; adaptive so other input sizes still give one vector.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def build_model(cfg) -> CustomResNet:
    """The model a `utils.config.Config` describes (its channels, blocks and dropout), zero-initialised residual
    branches where `zero_init_residual` is on (the stem's patch_pca init needs the images: utils.recipe)."""
    model = CustomResNet(**cfg.model_kwargs())
    if cfg.zero_init_residual:
        zero_init_residual(model)
    return model


@torch.no_grad()
def zero_init_residual(model: nn.Module) -> None:
    """Each BasicBlock's last BatchNorm (after conv2) scaled by 0: the block starts as its shortcut."""
    for block in model.modules():
        if isinstance(block, BasicBlock):
            nn.init.zeros_(block.conv2[1].weight)


@torch.no_grad()
def patch_pca_filters(images: torch.Tensor, out_channels: int, kernel: int = 3,
                      eps: float = PATCH_PCA_EPS) -> torch.Tensor:
    """`out_channels` conv filters (out_channels, C, kernel, kernel) from every kernel x kernel patch (no padding) of
    the float images (N, C, H, W): the eigenvectors of the patches' covariance, largest variance first, each with
    its largest entry positive and scaled by 1/sqrt(variance + eps). Filter k is component k for k < half (half =
    ceil(out_channels / 2); past C x kernel^2 components they repeat from the first), then the same negated."""
    dim = images.shape[1] * kernel * kernel
    total, outer, n = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), 0
    for chunk in images.split(256):      # float64 sums, a chunk of patches at a time
        patches = F.unfold(chunk.double().cpu(), kernel).transpose(1, 2).reshape(-1, dim)
        total, outer, n = total + patches.sum(0), outer + patches.T @ patches, n + len(patches)
    mean = total / n
    variances, vectors = torch.linalg.eigh((outer - n * torch.outer(mean, mean)) / (n - 1))
    variances, vectors = variances.flip(0), vectors.flip(1).T                   # rows, largest variance first
    vectors = vectors * vectors.gather(1, vectors.abs().argmax(1, keepdim=True)).sign()
    scaled = vectors / (variances.clamp_min(0) + eps).sqrt()[:, None]
    chosen = scaled[torch.arange((out_channels + 1) // 2) % dim]
    return torch.cat([chosen, -chosen])[:out_channels].reshape(out_channels, -1, kernel, kernel).float()


@torch.no_grad()
def init_stem_patch_pca(model: CustomResNet, images: torch.Tensor) -> None:
    """The stem conv's filters set to `patch_pca_filters` of `images` (normalized as the training batches are)."""
    weight = model.stem[0][0].weight
    weight.copy_(patch_pca_filters(images, weight.shape[0], weight.shape[-1]))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, as torchinfo counts them."""
    from torchinfo import summary
    return summary(model, input_size=(1, 3, 32, 32), verbose=0, device="cpu").trainable_params


def parameter_table(model: CustomResNet):
    """Trainable parameters per component (stem, each stage, head): the paper's Table 1."""
    import pandas as pd
    rows = [("stem", model.stem)] + [(f"stage{i + 1}", s) for i, s in enumerate(model.stages)]
    rows.append(("head (fc)", model.fc))
    table = pd.DataFrame({"component": [name for name, _ in rows],
                          "parameters": [sum(p.numel() for p in m.parameters() if p.requires_grad)
                                         for _, m in rows]})
    total = int(table["parameters"].sum())
    table["share_%"] = (100 * table["parameters"] / total).round(2)
    return pd.concat([table, pd.DataFrame([{"component": "total", "parameters": total,
                                            "share_%": 100.0}])], ignore_index=True)
