"""Equality of the training step's faster computations with the computations they replaced.

Each reference below is the previous implementation (or the plain definition), kept here so that a
speed-up can never change a result beyond float rounding.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from selab.method.superpixels import PoolingMatrix, _bilinear_taps, pool_to_nodes, pooling_matrix, slic, upsample_and_pool


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
    import selab.method.superpixels as sp

    assignment = superpixel_batch[0]
    expected = sorted_unique_adjacency(assignment)
    assert torch.equal(sp.adjacency(assignment), expected)
    assert torch.equal(torch.from_numpy(sp.adjacency(assignment.numpy())), expected)
    shuffled = torch.randperm(int(assignment.max()) + 1, generator=torch.Generator().manual_seed(0))[assignment]
    assert torch.equal(sp.adjacency(shuffled), sorted_unique_adjacency(shuffled))  # long spans between ids
    monkeypatch.setattr(sp, "_DENSE_KEYS", 10)  # the sort fallback for very large tables
    assert torch.equal(sp.adjacency(assignment), expected)


def test_unpool_to_pixels_equals_indexing(superpixel_batch):
    from selab.method.superpixels import unpool_to_pixels

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


@pytest.fixture(scope="module")
def local_superpixels(superpixel_batch):
    """The batch's two label maps with per-image ids (0..N_b-1), as the data loader gives them."""
    assignment, _, ptr = superpixel_batch
    return assignment - ptr[:-1].view(-1, 1, 1)


def test_superpixel_structures_equal_building_them_per_batch(local_superpixels):
    from selab.method.graph import SuperpixelStructures, graph_from_superpixels

    structures = SuperpixelStructures()
    expected = graph_from_superpixels(local_superpixels)
    for _ in range(2):  # a miss (computed per image), then a hit (kept)
        graph, matrix = structures.graph(local_superpixels, (15, 19))
        for name in ("edge_index", "batch", "pos", "size", "assignment", "superpixel_assignment"):
            assert torch.equal(getattr(graph, name), getattr(expected, name)), name
        rows, cols, weights = pooling_matrix(expected.assignment, expected.num_nodes, expected.ptr, (15, 19))
        reference = PoolingMatrix.from_coo(rows, cols, weights, (expected.num_nodes, 2 * 15 * 19))
        for got, want in zip(matrix[:-1], reference[:-1]):
            assert torch.equal(got, want)
        assert matrix.shape == reference.shape
    assert (structures.hits, structures.misses, len(structures)) == (2, 2, 2)
    # the images in another order, and one image alone: entries are per image
    swapped, _ = structures.graph(local_superpixels.flip(0), (15, 19))
    assert torch.equal(swapped.edge_index, graph_from_superpixels(local_superpixels.flip(0)).edge_index)
    assert structures.misses == 2
    # a full cache computes but keeps nothing new
    full = SuperpixelStructures(max_bytes=0)
    graph, _ = full.graph(local_superpixels, (15, 19))
    assert torch.equal(graph.edge_index, expected.edge_index) and len(full) == 0
    with pytest.raises(ValueError, match="max_bytes"):
        SuperpixelStructures(max_bytes=-1)


def test_prepared_pooling_matrix_gives_the_same_pooling_and_gradient(superpixel_batch, local_superpixels):
    from selab.method.graph import SuperpixelStructures

    assignment, num_nodes, ptr = superpixel_batch
    _, matrix = SuperpixelStructures().graph(local_superpixels, (15, 19))
    torch.manual_seed(3)
    features = torch.randn(2, 6, 15, 19, requires_grad=True)
    weights = torch.randn(num_nodes, 6)
    outputs, grads = [], []
    for prepared in (None, matrix):
        out = upsample_and_pool(features, assignment, num_nodes, ptr, matrix=prepared)
        (grad,) = torch.autograd.grad((out * weights).sum(), features)
        outputs.append(out)
        grads.append(grad)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(grads[0], grads[1])  # the same CSR products
    with pytest.raises(ValueError, match="PoolingMatrix of shape"):
        upsample_and_pool(features[:, :, :14], assignment, num_nodes, ptr, matrix=matrix)


def test_node_label_histogram_equals_counting_the_valid_pixels(superpixel_batch):
    from selab.method.superpixels import node_label_histogram

    assignment, num_nodes, _ = superpixel_batch
    mask = torch.randint(0, 7, assignment.shape, generator=torch.Generator().manual_seed(4))
    mask[:, :5] = 255  # ignored pixels
    mask[0, 7, :9] = -1
    labels, nodes = mask.reshape(-1), assignment.reshape(-1)
    valid = (labels >= 0) & (labels < 7)
    reference = torch.bincount(nodes[valid] * 7 + labels[valid], minlength=num_nodes * 7).reshape(num_nodes, 7)
    assert torch.equal(node_label_histogram(mask, assignment, num_nodes, 7), reference.float())


def test_model_with_kept_structures_equals_building_them(synthetic_batch):
    """The graph variants' logits, losses and gradients are the same with the structure cache on or off."""
    batch = synthetic_batch(48, 0, 40)
    from selab.model.loss import compute_loss
    from selab.model.config import ModelConfig
    from selab.model.parser import SELabModel

    for variant in ("graph_lstm", "se_lstm"):
        results = []
        for keep in (False, True, True):  # off, then on: a miss and a hit
            torch.manual_seed(0)
            model = SELabModel(ModelConfig(variant=variant, backbone="small", feature_channels=8, hidden_channels=8))
            if not keep:
                model.structures = None
            for _ in range(2 if keep else 1):
                model.zero_grad()
                torch.manual_seed(5)  # the same dropout in every pass
                output = model(batch, generator=torch.Generator().manual_seed(1),
                               energy_labels=batch["mask"])
                loss = compute_loss(output, batch, model.config)["loss"]
                loss.backward()
            results.append((output.logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()
                                                                      if p.grad is not None]))
        for logits, loss, grads in results[1:]:
            assert torch.equal(logits, results[0][0]) and torch.equal(loss, results[0][1]), variant
            assert all(torch.equal(a, b) for a, b in zip(grads, results[0][2])), variant


def test_merge_loss_from_the_models_level_labels_equals_counting_again(synthetic_batch):
    """compute_loss takes the merge targets from the labels the chains' energy read: the same targets."""
    import dataclasses

    from selab.model.loss import compute_loss, merge_targets
    from selab.model.config import ModelConfig
    from selab.model.parser import SELabModel

    batch = synthetic_batch(48, 1, 40)
    torch.manual_seed(0)
    model = SELabModel(ModelConfig(variant="se_lstm", backbone="small", feature_channels=8, hidden_channels=8))
    output = model(batch, generator=torch.Generator().manual_seed(1), energy_labels=batch["mask"])
    assert len(output.level_labels) == len(output.merge_prob) == 2 and output.labels_mask is batch["mask"]
    counted = merge_targets(output.levels[:2], batch["mask"], 7)
    for level, labels, target in zip(output.levels, output.level_labels, counted):
        assert torch.equal((labels[level.edge_index[0]] == labels[level.edge_index[1]]).float(), target)
    reused = compute_loss(output, batch, model.config)["merge"]
    again = compute_loss(dataclasses.replace(output, level_labels=[]), batch, model.config)["merge"]
    assert torch.equal(reused, again)
    other_mask = dict(batch, mask=batch["mask"].flip(-1))  # another mask: counted on it, not reused
    expected = compute_loss(dataclasses.replace(output, level_labels=[]), other_mask, model.config)["merge"]
    assert torch.equal(compute_loss(output, other_mask, model.config)["merge"], expected)
