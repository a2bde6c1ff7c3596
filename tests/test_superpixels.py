"""Tests for selab.method.superpixels: SLIC labels, region adjacency against skimage's RAG, pooling."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage import data
from skimage import graph as skgraph

from selab.method.superpixels import (
    adjacency,
    check_labels,
    pool_to_nodes,
    relabel,
    slic,
    unpool_to_pixels,
)

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def rag_edges(labels):
    """Edge set of scikit-image's RAG, as a sorted [2,E] int64 array with i < j."""
    rag = skgraph.RAG(labels, connectivity=1)
    pairs = sorted((min(a, b), max(a, b)) for a, b in rag.edges())
    return np.array(pairs, dtype=np.int64).reshape(-1, 2).T


@pytest.fixture(scope="module", params=PHOTOS)
def photo_labels(request):
    image = getattr(data, request.param)()
    return image, slic(image, n_segments=300)


def test_slic_labels_are_sequential_int64(photo_labels):
    image, labels = photo_labels
    assert labels.shape == image.shape[:2]
    assert labels.dtype == np.int64
    n = check_labels(labels)
    assert labels.min() == 0 and labels.max() == n - 1
    assert 100 < n < 600


def test_adjacency_equals_skimage_rag(photo_labels):
    _, labels = photo_labels
    edges = adjacency(labels)
    assert edges.dtype == np.int64
    np.testing.assert_array_equal(edges, rag_edges(labels))


def test_adjacency_is_sorted_unique_lower_upper(photo_labels):
    _, labels = photo_labels
    edges = adjacency(labels)
    assert (edges[0] < edges[1]).all()
    keys = edges[0] * (labels.max() + 1) + edges[1]
    assert (np.diff(keys) > 0).all()


def test_slic_accepts_float_and_torch_images():
    image = data.astronaut()[::4, ::4]
    from_uint8 = slic(image, n_segments=50)
    from_float = slic(image.astype(np.float32) / 255.0, n_segments=50)
    from_torch = slic(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, n_segments=50)
    np.testing.assert_array_equal(from_uint8, from_float)
    np.testing.assert_array_equal(from_uint8, from_torch)


@pytest.mark.parametrize(
    "image, error",
    [
        (np.zeros((8, 8), np.uint8), ValueError),
        (np.zeros((8, 8, 4), np.uint8), ValueError),
        (np.zeros((8, 8, 3), np.int32), TypeError),
        (np.full((8, 8, 3), 2.0), ValueError),
        (torch.zeros(8, 8, 3), ValueError),
        ([[0, 0, 0]], TypeError),
    ],
)
def test_slic_rejects_bad_images(image, error):
    with pytest.raises(error, match="image"):
        slic(image, n_segments=4)


def test_relabel_and_check_labels():
    labels = np.array([[3, 3, 7], [9, 7, 7]])
    np.testing.assert_array_equal(relabel(labels), [[0, 0, 1], [2, 1, 1]])
    assert torch.equal(relabel(torch.from_numpy(labels)), torch.tensor([[0, 0, 1], [2, 1, 1]]))
    with pytest.raises(ValueError, match="gaps"):
        check_labels(labels)
    with pytest.raises(TypeError, match="labels"):
        check_labels(labels.astype(float))
    assert check_labels(relabel(labels)) == 3


def test_adjacency_small_and_batched():
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    np.testing.assert_array_equal(adjacency(labels), [[0, 0, 1], [1, 2, 2]])
    # diagonal contact is not 4-connected
    np.testing.assert_array_equal(adjacency(np.array([[0, 1], [1, 0]])), [[0], [1]])
    assert adjacency(np.zeros((3, 3), np.int64)).shape == (2, 0)
    # batch with global ids: no pairs across images even though image 0's last row touches image 1's first
    batch = np.stack([labels, labels + 3])
    np.testing.assert_array_equal(adjacency(batch), [[0, 0, 1, 3, 3, 4], [1, 2, 2, 4, 5, 5]])
    torch_edges = adjacency(torch.from_numpy(batch))
    assert torch.equal(torch_edges, torch.from_numpy(adjacency(batch)))
    with pytest.raises(TypeError, match="labels"):
        adjacency(labels.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        adjacency(np.zeros(5, np.int64))


@settings(max_examples=40, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 6)))
def test_adjacency_matches_rag_on_random_maps(labels):
    expected = rag_edges(labels)
    np.testing.assert_array_equal(adjacency(labels), expected)
    assert torch.equal(adjacency(torch.from_numpy(labels)), torch.from_numpy(expected))


def test_pool_to_nodes_means_counts_centroids():
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    feats = torch.arange(12.0).reshape(2, 2, 3)  # C=2
    pooled = pool_to_nodes(feats, labels)
    flat = feats.reshape(2, -1).T
    expected = torch.stack([flat[labels.reshape(-1) == k].mean(0) for k in range(3)])
    torch.testing.assert_close(pooled.x, expected)
    torch.testing.assert_close(pooled.count, torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(pooled.pos, torch.tensor([[0.0, 0.5], [0.5, 2.0], [1.0, 0.5]]))


def test_pool_batched_global_ids_and_unpool_roundtrip(photo_labels):
    image, labels = photo_labels
    n = labels.max() + 1
    img = torch.from_numpy(image).permute(2, 0, 1).double() / 255
    batch_feats = torch.stack([img, 1 - img])
    batch_labels = np.stack([labels, labels + n])
    pooled = pool_to_nodes(batch_feats, batch_labels)
    single = pool_to_nodes(img, labels)
    torch.testing.assert_close(pooled.x[:n], single.x)
    torch.testing.assert_close(pooled.x[n:], 1 - single.x)
    torch.testing.assert_close(pooled.count[:n], pooled.count[n:])
    assert pooled.count.sum() == 2 * labels.size
    # unpooling node means then pooling again gives the same means
    back = unpool_to_pixels(pooled.x, batch_labels)
    assert back.shape == batch_feats.shape
    torch.testing.assert_close(pool_to_nodes(back, batch_labels).x, pooled.x)


def test_pool_and_unpool_are_differentiable():
    labels = torch.tensor([[0, 0, 1], [2, 2, 1]])
    feats = torch.randn(4, 2, 3, requires_grad=True)
    pooled = pool_to_nodes(feats, labels)
    pooled.x.sum().backward()
    # each pixel contributes 1/count of its node to the sum of means
    torch.testing.assert_close(feats.grad, torch.full_like(feats, 0.5))
    x = torch.randn(3, 4, requires_grad=True)
    unpool_to_pixels(x, labels).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_pool_rejects_bad_input():
    labels = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="labels"):
        pool_to_nodes(torch.zeros(1, 3, 2), labels)
    with pytest.raises(TypeError, match="features"):
        pool_to_nodes(np.zeros((1, 2, 3)), labels)
    with pytest.raises(ValueError, match="num_nodes"):
        pool_to_nodes(torch.zeros(1, 2, 3), labels + 4, num_nodes=3)
    with pytest.raises(ValueError, match="labels"):
        unpool_to_pixels(torch.zeros(2, 1), labels + 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_follows_cuda_device():
    labels = torch.tensor([[0, 0, 1], [2, 2, 1]], device="cuda")
    assert adjacency(labels).device.type == "cuda"
    pooled = pool_to_nodes(torch.randn(2, 2, 3, device="cuda"), labels.cpu().numpy())
    assert pooled.x.device.type == "cuda" and pooled.pos.device.type == "cuda"
    assert unpool_to_pixels(pooled.x, labels).device.type == "cuda"
