import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selab.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, load_efficientnet_lite0


def test_small_shapes_and_gradients():
    net = build_backbone("small")
    feats = net(torch.rand(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == net.out_channels
    assert [64 // f.shape[-1] for f in feats] == net.strides
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unknown_backbone():
    with pytest.raises(ValueError, match="name"):
        build_backbone("vgg")


def test_pretrained_lite0_classifies_chelsea_as_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
    image = (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    net = load_efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        top = int(net(image).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cats (285: Egyptian cat)


def test_lite0_multiscale_features_match_the_network():
    backbone = build_backbone("efficientnet_lite0", pretrained=True).eval()
    image = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        feats = backbone(image)
        assert [tuple(f.shape) for f in feats] == [(1, 40, 12, 12), (1, 112, 6, 6), (1, 320, 3, 3)]
        net = backbone.net
        x = (image - backbone.mean) / backbone.std
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x)
    torch.testing.assert_close(feats[-1], x)
    assert build_backbone("efficientnet_lite0", output_stride=16).strides == [16, 32]
