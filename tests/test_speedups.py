"""Equality of the training step's faster computations with the computations they replaced.

Each reference below is the previous implementation (or the plain definition), kept here so that a
speed-up can never change a result beyond float rounding.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from selab.superpixels import _bilinear_taps, pool_to_nodes, pooling_matrix, slic, upsample_and_pool


@pytest.fixture(scope="module")
def superpixel_batch():
    """Two SLIC label maps (about 300 superpixels each) with global ids, as in a training batch."""
    images = [data.astronaut()[:120, :150], data.coffee()[:120, :150]]
    labels = [torch.from_numpy(slic(image, n_segments=300)) for image in images]
    counts = [int(lab.max()) + 1 for lab in labels]
    ptr = torch.tensor([0, counts[0], counts[0] + counts[1]])
    assignment = torch.stack([labels[0], labels[1] + counts[0]])
    return assignment, int(ptr[-1]), ptr


def dense_upsample_and_pool(features, labels, num_nodes, ptr):
    """The dense [N_b, h*w] matrix product that ``upsample_and_pool`` used before its CSR form."""
    batch, channels, h, w = features.shape
    size_y, size_x = labels.shape[-2:]
    rows, cols = _bilinear_taps(size_y, h, features.device), _bilinear_taps(size_x, w, features.device)
    count = torch.bincount(labels.reshape(-1), minlength=num_nodes).to(features.dtype).clamp(min=1)
    pooled = []
    for b in range(batch):
        start, stop = int(ptr[b]), int(ptr[b + 1])
        local = (labels[b] - start) * (h * w)
        matrix = torch.zeros((stop - start) * h * w, dtype=features.dtype)
        for r_index, r_weight in ((rows[0], rows[2]), (rows[1], rows[3])):
            for c_index, c_weight in ((cols[0], cols[2]), (cols[1], cols[3])):
                key = local + (r_index[:, None] * w + c_index[None, :])
                matrix.index_add_(0, key.reshape(-1), (r_weight[:, None] * c_weight[None, :]).to(features.dtype).reshape(-1))
        matrix = matrix.view(stop - start, h * w) / count[start:stop, None]
        pooled.append(matrix @ features[b].reshape(channels, h * w).t())
    return torch.cat(pooled, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upsample_and_pool_equals_dense_matrix_and_definition(superpixel_batch, dtype):
    assignment, num_nodes, ptr = superpixel_batch
    torch.manual_seed(0)
    features = torch.randn(2, 5, 15, 19, dtype=dtype)  # stride 8 rows, a non-integer stride along columns
    fast = upsample_and_pool(features, assignment, num_nodes, ptr)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(fast, dense_upsample_and_pool(features, assignment, num_nodes, ptr), **tolerance)
    upsampled = F.interpolate(features, size=assignment.shape[-2:], mode="bilinear", align_corners=False)
    # the bilinear taps are float32 in both pooling forms (as before), F.interpolate's follow the dtype
    torch.testing.assert_close(fast, pool_to_nodes(upsampled, assignment, num_nodes).x, atol=1e-5, rtol=1e-5)


def test_upsample_and_pool_gradient_equals_dense_matrix(superpixel_batch):
    assignment, num_nodes, ptr = superpixel_batch
    torch.manual_seed(1)
    features = torch.randn(2, 4, 15, 19, dtype=torch.float64)
    weights = torch.randn(num_nodes, 4, dtype=torch.float64)
    grads = []
    for pool in (upsample_and_pool, dense_upsample_and_pool):
        leaf = features.clone().requires_grad_()
        (pool(leaf, assignment, num_nodes, ptr) * weights).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-12)
    leaf = features[:1, :2, :5, :6].clone().requires_grad_()
    small = assignment[:1, :40, :48]
    small_nodes = torch.unique(small, return_inverse=True)[1].reshape(small.shape)
    n = int(small_nodes.max()) + 1
    assert torch.autograd.gradcheck(lambda f: upsample_and_pool(f, small_nodes, n, torch.tensor([0, n])), (leaf,))


def test_pooling_matrix_rows_sum_to_one(superpixel_batch):
    assignment, num_nodes, ptr = superpixel_batch
    rows, cols, weights = pooling_matrix(assignment, num_nodes, ptr, (15, 19), torch.float64)
    assert bool((rows[1:] >= rows[:-1]).all())  # sorted by row (CSR), then by column within a row
    same_row = rows[1:] == rows[:-1]
    assert bool((cols[1:][same_row] > cols[:-1][same_row]).all())
    assert bool(((cols // (15 * 19)) == torch.searchsorted(ptr, rows, right=True) - 1).all())  # cells of its image
    total = torch.zeros(num_nodes, dtype=torch.float64).index_add_(0, rows, weights)
    torch.testing.assert_close(total, torch.ones(num_nodes, dtype=torch.float64))


def sorted_unique_adjacency(labels):
    """Region adjacency as computed before the sort-free table: one torch.unique over pair keys."""
    lab = labels.to(torch.int64)
    a = torch.cat([lab[..., :, :-1].reshape(-1), lab[..., :-1, :].reshape(-1)])
    b = torch.cat([lab[..., :, 1:].reshape(-1), lab[..., 1:, :].reshape(-1)])
    boundary = a != b
    a, b = a[boundary], b[boundary]
    n = int(lab.max()) + 1
    key = torch.unique(torch.minimum(a, b) * n + torch.maximum(a, b))
    return torch.stack([key // n, key % n])


def test_adjacency_equals_sorted_unique(superpixel_batch, monkeypatch):
    import selab.superpixels as sp

    assignment = superpixel_batch[0]
    expected = sorted_unique_adjacency(assignment)
    assert torch.equal(sp.adjacency(assignment), expected)
    assert torch.equal(torch.from_numpy(sp.adjacency(assignment.numpy())), expected)
    shuffled = torch.randperm(int(assignment.max()) + 1, generator=torch.Generator().manual_seed(0))[assignment]
    assert torch.equal(sp.adjacency(shuffled), sorted_unique_adjacency(shuffled))  # long spans between ids
    monkeypatch.setattr(sp, "_DENSE_KEYS", 10)  # the sort fallback for very large tables
    assert torch.equal(sp.adjacency(assignment), expected)


def test_unpool_to_pixels_equals_indexing(superpixel_batch):
    from selab.superpixels import unpool_to_pixels

    assignment, num_nodes, _ = superpixel_batch
    torch.manual_seed(2)
    x = torch.randn(num_nodes, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 7, *assignment.shape[-2:], dtype=torch.float64)
    out = unpool_to_pixels(x, assignment)
    reference = x[assignment].movedim(-1, -3)
    assert out.is_contiguous() and torch.equal(out, reference)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gr,) = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(gx, gr, atol=1e-12, rtol=1e-12)
    assert torch.equal(unpool_to_pixels(x, assignment[1]), x[assignment[1]].movedim(-1, -3))
