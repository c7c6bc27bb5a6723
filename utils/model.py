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
    """The model a `utils.config.Config` describes (its channels, blocks and dropout)."""
    return CustomResNet(**cfg.model_kwargs())


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
