import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selab.model.loss import merge_targets
from selab.model.config import ModelConfig
from selab.model.parser import SELabModel, build_model
from selab.method.superpixels import pool_to_nodes, upsample_and_pool


@pytest.fixture(scope="module")
def tiny_batch(synthetic_batch):
    return synthetic_batch(48, seed=3, n_segments=40)


def test_upsample_and_pool_equals_upsample_then_pool():
    torch.manual_seed(0)
    features = torch.rand(3, 5, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 9, (3, 29, 31)) + 9 * torch.arange(3).view(3, 1, 1)
    fast = upsample_and_pool(features, labels, 27, torch.tensor([0, 9, 18, 27]))
    reference = pool_to_nodes(F.interpolate(features, size=(29, 31), mode="bilinear", align_corners=False),
                              labels, 27).x
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["cnn", "graph_lstm", "se_lstm"])
def test_variants_forward_backward(variant, tiny_batch):
    torch.manual_seed(0)
    model = build_model({"variant": variant, "backbone": "small", "feature_channels": 16, "hidden_channels": 8,
                         "num_layers": 3 if variant == "se_lstm" else 2, "n_segments": 40})
    model.train()
    out = model(tiny_batch, generator=torch.Generator().manual_seed(0), energy_labels=tiny_batch["mask"])
    assert out.logits.shape == (2, 7, 48, 48)
    F.cross_entropy(out.logits, tiny_batch["mask"]).backward()
    assert model.classifier.weight.grad is not None
    if variant != "cnn":
        assert out.confidence_logits.shape == (2, 7, 48, 48)
        assert out.levels[0].num_nodes == int(tiny_batch["superpixels"][0].max() + tiny_batch["superpixels"][1].max() + 2)
        assert model.layers[0].input_proj.weight.grad.abs().sum() > 0
    if variant == "se_lstm":
        targets = merge_targets(out.levels[:2], tiny_batch["mask"], 7)
        assert len(out.merge_prob) == len(targets) == 2
        assert len(out.levels) == 3 and out.levels[1].num_nodes <= out.levels[0].num_nodes
        assert all(p.shape == t.shape for p, t in zip(out.merge_prob, targets))
    model.eval()
    with torch.no_grad():
        first = model(tiny_batch).logits
        second = model(tiny_batch).logits
    torch.testing.assert_close(first, second)  # deterministic at test time


@pytest.mark.parametrize("training", [True, False])
def test_se_lstm_unpools_all_levels_through_the_superpixels_exactly(training, tiny_batch):
    """One unpooling of the levels' logits summed on the superpixels equals one unpooling per level."""
    import dataclasses

    from selab.method.graph import graph_from_superpixels

    torch.manual_seed(0)
    model = build_model({"variant": "se_lstm", "backbone": "small", "feature_channels": 16, "hidden_channels": 8,
                         "num_layers": 3, "n_segments": 40, "dropout": 0.0}).train(training)
    graph = graph_from_superpixels(tiny_batch["superpixels"])
    assert graph.superpixel_assignment is not None
    per_level = dataclasses.replace(graph, superpixel_assignment=None)  # forces one unpooling per level
    outputs = []
    for g in (graph, per_level):
        torch.manual_seed(1)
        outputs.append(model(dict(tiny_batch, graph=g), generator=torch.Generator().manual_seed(0),
                             energy_labels=tiny_batch["mask"] if training else None))
    fast, slow = outputs
    assert [lvl.num_nodes for lvl in fast.levels] == [lvl.num_nodes for lvl in slow.levels]
    assert fast.levels[-1].num_nodes < fast.levels[0].num_nodes  # the structure did evolve
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["confidence", "random", "bfs", "dfs"])
def test_orders(order, tiny_batch):
    model = build_model({"variant": "graph_lstm", "feature_channels": 8, "hidden_channels": 8, "order": order})
    out = model.eval()(tiny_batch, generator=torch.Generator().manual_seed(1))
    graph = out.levels[0]
    for rank in out.ranks:  # each image's ranks are a permutation of 0..n_b-1
        for b, (lo, hi) in enumerate(zip(graph.ptr[:-1].tolist(), graph.ptr[1:].tolist())):
            assert sorted(rank[lo:hi].tolist()) == list(range(hi - lo)), b
    first, second = out.ranks
    if order == "random":  # a new draw per layer, the same draws for the same seed
        assert not torch.equal(first, second)
        again = model(tiny_batch, generator=torch.Generator().manual_seed(1))
        assert all(torch.equal(a, b) for a, b in zip(out.ranks, again.ranks))
    else:  # deterministic: both layers read the same node confidences
        assert torch.equal(first, second)
    if order in ("bfs", "dfs"):  # a traversal: every node but each image's first has an earlier neighbour
        src, dst = graph.edge_index
        earlier = torch.zeros(graph.num_nodes, dtype=torch.bool)
        earlier[dst[first[src] < first[dst]]] = True
        earlier[src[first[dst] < first[src]]] = True
        assert torch.equal(earlier, first != 0)
    if order == "confidence":  # the rank of a node's confidence order differs from a traversal's
        bfs = build_model({"variant": "graph_lstm", "feature_channels": 8, "hidden_channels": 8, "order": "bfs"})
        bfs.load_state_dict(model.state_dict())
        assert not torch.equal(first, bfs.eval()(tiny_batch).ranks[0])


def test_graph_variant_needs_superpixels(tiny_batch):
    model = build_model({"variant": "graph_lstm", "feature_channels": 8, "hidden_channels": 8})
    with pytest.raises(ValueError, match="superpixels"):
        model({"image": tiny_batch["image"]})


def test_freeze_backbone_has_no_gradients_and_stays_in_eval(tiny_batch):
    model = build_model({"variant": "cnn", "freeze_backbone": True, "feature_channels": 8})
    model.train()
    assert not model.backbone.training and model.neck.training
    F.cross_entropy(model(tiny_batch).logits, tiny_batch["mask"]).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.requires_grad is False for p in model.backbone.parameters())


def test_cached_features_give_the_same_logits(tiny_batch):
    model = build_model({"variant": "graph_lstm", "freeze_backbone": True, "feature_channels": 8,
                         "hidden_channels": 8}).eval()
    with torch.no_grad():
        direct = model(tiny_batch).logits
        features = model.backbone(tiny_batch["image"])
        cached = model(dict(tiny_batch, features=features)).logits
    torch.testing.assert_close(direct, cached)


def test_feature_strides_selects_what_the_neck_reads(tiny_batch):
    model = build_model({"variant": "graph_lstm", "freeze_backbone": True, "feature_channels": 8,
                         "hidden_channels": 8, "feature_strides": [8]}).eval()
    assert model.neck.reduce[0].in_channels == model.backbone.out_channels[0]
    with torch.no_grad():
        features = model.backbone(tiny_batch["image"])
        logits = model(dict(tiny_batch, features=features)).logits
        # the stride-16 map is not read: replacing it changes nothing
        other = [features[0], torch.randn_like(features[1])]
        torch.testing.assert_close(model(dict(tiny_batch, features=other)).logits, logits, rtol=0, atol=0)
    every = build_model({"variant": "cnn", "feature_channels": 8})
    assert every.neck.reduce[0].in_channels == sum(every.backbone.out_channels)
    with pytest.raises(ValueError, match="feature_strides"):
        build_model({"variant": "cnn", "feature_channels": 8, "feature_strides": [4]})


@pytest.mark.parametrize("field,value", [("variant", "unet"), ("backbone", "vgg"), ("hidden_channels", 0),
                                         ("order", "sideways"), ("dropout", 1.5), ("output_stride", 4)])
def test_config_names_the_bad_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_build_model_rejects_unknown_fields():
    with pytest.raises(ValueError, match="hiden_channels"):
        build_model({"hiden_channels": 3})
    with pytest.raises(TypeError):
        SELabModel({"variant": "cnn"})


# ------------------------------------------------------------------ the default configuration is unchanged
@pytest.fixture(scope="module")
def batch64(synthetic_batch):
    return synthetic_batch(64, seed=5, n_segments=60)


# Recorded at 7ebce88, before the options of the next level and of evolution (next_input, next_state, eval_samples, energy, per-layer
# evolution lists) were added: the defaults of every new option must reproduce these numbers.
DEFAULT_OUTPUTS = {
    ("graph_lstm", True): (-1432.6942815058865, [0.262314110994339, -0.09270597249269485, 0.27602508664131165,
                                                  -0.009026514366269112, -0.6631255149841309, -0.5827165246009827,
                                                  0.29378947615623474], [49]),
    ("graph_lstm", False): (1354.3642199030146, [0.1878761351108551, 0.07931511104106903, 0.010899651795625687,
                                                 0.14011897146701813, -0.22883950173854828, -0.006500424817204475,
                                                 -0.02027629315853119], [49]),
    ("se_lstm", True): (-2071.218260403839, [0.17234337329864502, -0.25570663809776306, 0.3118056654930115,
                                             0.07968486845493317, -0.5947040915489197, -0.5433204770088196,
                                             0.25259172916412354], [49, 34, 24]),
    ("se_lstm", False): (2773.2918292582035, [0.19970373809337616, 0.020130574703216553, 0.07100071758031845,
                                              0.218955397605896, -0.2077307552099228, 0.010702995583415031,
                                              0.02939959429204464], [49, 49, 22]),
}


@pytest.mark.parametrize("variant", ["graph_lstm", "se_lstm"])
def test_default_config_outputs_are_unchanged(variant, batch64):
    torch.manual_seed(0)
    model = build_model({"variant": variant, "backbone": "small", "feature_channels": 16, "hidden_channels": 8})
    for training in (True, False):
        model.train(training)
        torch.manual_seed(1)  # dropout
        with torch.no_grad():
            out = model(batch64, generator=torch.Generator().manual_seed(2),
                        energy_labels=batch64["mask"] if training else None)
        total, first, nodes = DEFAULT_OUTPUTS[(variant, training)]
        assert [g.num_nodes for g in out.levels] == nodes
        assert float(out.logits.double().sum()) == pytest.approx(total, rel=1e-6, abs=1e-6)
        torch.testing.assert_close(out.logits[0, :, 0, 0], torch.tensor(first), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ next level's input and state
def _se_lstm(**options):
    torch.manual_seed(0)
    config = {"variant": "se_lstm", "backbone": "small", "feature_channels": 16, "hidden_channels": 8,
              "num_layers": 3, "dropout": 0.0}
    model = build_model({**config, **options}).eval()
    for evo in model.evolutions:  # merge confidently: greedy then merges the whole budget
        torch.nn.init.constant_(evo.merge_probability.linear.bias, 3.0)
    return model


def _record_layers(model, batch, shift=0.0):
    """Each Graph LSTM layer's x, h0, m0 and output; ``shift`` is added to the first layer's output h (its
    residual path) to see what the later layers read from it."""
    import dataclasses

    seen = {"x0": []}
    handles = [model.node_input.register_forward_hook(lambda mod, args, out: seen["x0"].append(out))]
    for index, layer in enumerate(model.layers):
        def pre(mod, args, kwargs, index=index):
            seen[index] = {"x": args[0], "h0": kwargs.get("h0"), "m0": kwargs.get("m0")}

        def post(mod, args, kwargs, output, index=index):
            if index == 0 and shift:
                output = dataclasses.replace(output, h=output.h + shift)
            seen[index]["out"] = output
            return output

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(0))
    for handle in handles:
        handle.remove()
    return out, seen


def _mean_by(values, cluster):
    from selab.method.graph import scatter_mean

    return scatter_mean(values, cluster, int(cluster.max()) + 1)


def test_next_input_level0_reads_the_level0_features_not_the_layer_output(batch64):
    model = _se_lstm(next_input="level0")
    out, seen = _record_layers(model, batch64)
    shifted_out, shifted = _record_layers(model, batch64, shift=5.0)
    c1, c2 = out.traces[0].cluster, out.traces[1].cluster
    assert out.levels[2].num_nodes < out.levels[1].num_nodes < out.levels[0].num_nodes  # both levels merged
    x0 = seen["x0"][0]
    torch.testing.assert_close(seen[1]["x"], _mean_by(x0, c1))
    torch.testing.assert_close(seen[2]["x"], _mean_by(x0, c2[c1]))  # over the superpixels, not mean of means
    assert not torch.allclose(seen[2]["x"], _mean_by(_mean_by(x0, c1), c2))
    for index in (1, 2):  # the first layer's output (and its residual) does not reach the next inputs
        torch.testing.assert_close(shifted[index]["x"], seen[index]["x"])
    assert torch.equal(out.levels[2].x, seen[2]["x"])
    # the old behaviour, one option away: the next input is the clique mean of the layer output
    old, old_seen = _record_layers(_se_lstm(next_input="output"), batch64, shift=5.0)
    torch.testing.assert_close(old_seen[1]["x"], _mean_by(old_seen[0]["out"].h, old.traces[0].cluster))


def test_next_input_input_is_the_clique_mean_of_this_levels_input(batch64):
    out, seen = _record_layers(_se_lstm(next_input="input"), batch64, shift=5.0)
    c1, c2 = out.traces[0].cluster, out.traces[1].cluster
    torch.testing.assert_close(seen[1]["x"], _mean_by(seen["x0"][0], c1))
    torch.testing.assert_close(seen[2]["x"], _mean_by(seen[1]["x"], c2))


@pytest.mark.parametrize("next_state", ["output", "hidden", "zero"])
def test_next_state_is_the_chosen_clique_mean(next_state, batch64):
    out, seen = _record_layers(_se_lstm(next_state=next_state), batch64, shift=5.0)
    for index in (1, 2):
        cluster, previous = out.traces[index - 1].cluster, seen[index - 1]["out"]
        h0, m0 = seen[index]["h0"], seen[index]["m0"]
        if next_state == "zero":  # like graph_lstm: every layer starts from zero states
            assert h0 is None and m0 is None
            continue
        torch.testing.assert_close(m0, _mean_by(previous.m, cluster))
        if next_state == "hidden":  # the hidden state proper, tanh-bounded, whatever the residual carries
            torch.testing.assert_close(h0, _mean_by(previous.hidden, cluster))
            assert h0.abs().max() <= 1.0
        else:
            torch.testing.assert_close(h0, _mean_by(previous.h, cluster))
    if next_state == "output":
        assert seen[1]["h0"].abs().max() > 1.0  # the shifted residual reaches h0: not a hidden state
    # the next input is unchanged by next_state (default next_input="output": the layer output)
    torch.testing.assert_close(seen[1]["x"], _mean_by(seen[0]["out"].h, out.traces[0].cluster))


@pytest.mark.parametrize("field,value", [("next_input", "hidden"), ("next_state", "input"), ("eval_samples", 0),
                                         ("eval_seed", 1.5)])
def test_config_names_the_bad_new_option(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(variant="se_lstm", **{field: value})


# ------------------------------------------------------------------ se_lstm without evolution
@pytest.mark.parametrize("no_merge", [{"mode": "greedy", "threshold": 1.0}, {"mode": "mh", "merge_budget": 0,
                                                                            "eval_mode": "mh"}])
def test_se_lstm_mode_none_is_the_same_network_as_merging_nothing(no_merge, batch64):
    """mode none = a run where every evolution returns identity clusters (same parameters, carry, classifiers)."""
    base = {"variant": "se_lstm", "backbone": "small", "feature_channels": 16, "hidden_channels": 8, "num_layers": 3}
    torch.manual_seed(0)
    plain = build_model({**base, "evolution": {"mode": "none"}})
    merging = build_model({**base, "evolution": no_merge})
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in merging.state_dict().items()}
    merging.load_state_dict(plain.state_dict())
    # the stochastic training order draws from the generator, which MH draws from too: compare in the
    # confidence order so that only the structure can differ
    for model in (plain, merging):
        model.config.train_order = "confidence"
    for training in (True, False):
        outputs = []
        for model in (plain, merging):
            model.train(training)
            torch.manual_seed(1)  # dropout
            outputs.append(model(batch64, generator=torch.Generator().manual_seed(2),
                                 energy_labels=batch64["mask"] if training else None))
        none, identity = outputs
        assert [e.current_mode() for e in plain.evolutions] == ["none", "none"]  # also at test time
        assert all(torch.equal(t.cluster, torch.arange(t.cluster.numel())) for t in identity.traces)
        assert [g.num_nodes for g in none.levels] == [g.num_nodes for g in identity.levels] == [49] * 3
        torch.testing.assert_close(none.logits, identity.logits, rtol=0, atol=0)
        for a, b in zip(none.states, identity.states):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert len(none.merge_prob) == len(identity.merge_prob) == 2  # the merge loss is the same too
        for a, b in zip(none.merge_prob, identity.merge_prob):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        if training:
            F.cross_entropy(none.logits, batch64["mask"]).backward()


@pytest.mark.parametrize("mode,eval_mode,expected", [("none", None, "none"), ("mh", None, "greedy"),
                                                     ("greedy", None, "greedy"), ("none", "greedy", "greedy"),
                                                     ("mh", "mh", "mh")])
def test_evolution_mode_none_is_none_at_test_time_too(mode, eval_mode, expected):
    evolution = {"mode": mode} if eval_mode is None else {"mode": mode, "eval_mode": eval_mode}
    model = build_model({"variant": "se_lstm", "feature_channels": 8, "hidden_channels": 8, "evolution": evolution})
    assert [e.current_mode() for e in model.eval().evolutions] == [expected] * 2
    assert [e.current_mode() for e in model.train().evolutions] == [mode] * 2


# ------------------------------------------------------------------ training and test structures
def test_prediction_energy_in_training_ignores_the_labels(batch64):
    """energy_source='prediction': the training chains score partitions by node_class_prob, not by the mask."""
    # other labels: neighbouring superpixels mostly disagree (the synthetic mask is mostly background)
    permuted = dict(batch64, mask=batch64["superpixels"].long() % 3)
    clusters = {}
    for energy in ("ground_truth", "prediction"):
        model = _se_lstm(evolution={"energy_source": energy}).train()
        for name, batch in (("mask", batch64), ("permuted", permuted)):
            out = model(batch, generator=torch.Generator().manual_seed(0), energy_labels=batch["mask"])
            assert [t.energy_source for t in out.traces] == [energy] * 2
            clusters[energy, name] = [t.cluster for t in out.traces]
    assert all(torch.equal(a, b) for a, b in zip(clusters["prediction", "mask"], clusters["prediction", "permuted"]))
    assert not all(torch.equal(a, b) for a, b in zip(clusters["ground_truth", "mask"],
                                                     clusters["ground_truth", "permuted"]))


def test_eval_samples_average_the_logits_of_k_sampled_structures(batch64):
    model = _se_lstm(evolution={"eval_mode": "mh", "energy_source": "prediction"}, eval_samples=3)
    for evo in model.evolutions:  # uncertain merges: the chains' structures vary
        torch.nn.init.constant_(evo.merge_probability.linear.bias, 0.0)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        averaged = model(batch64, generator=generator)
        model.config.eval_samples = 1
        # one generator drawn from in turn: the same K structures one forward at a time
        generator = torch.Generator().manual_seed(4)
        singles = [model(batch64, generator=generator) for _ in range(3)]
        again = model(batch64, generator=torch.Generator().manual_seed(4))
    assert len(averaged.samples) == 3 and averaged.samples[0] is averaged
    clusters = [[t.cluster for t in sample.traces] for sample in averaged.samples]
    for sample, single in zip(clusters, singles):
        assert all(torch.equal(a, t.cluster) for a, t in zip(sample, single.traces))
    assert not all(torch.equal(a, b) for a, b in zip(clusters[0], clusters[1]))  # K different structures
    torch.testing.assert_close(averaged.logits, torch.stack([s.logits for s in singles]).mean(0), rtol=1e-5,
                               atol=1e-6)
    assert not torch.allclose(singles[0].logits, singles[1].logits)
    torch.testing.assert_close(again.logits, singles[0].logits, rtol=0, atol=0)  # K=1, fixed generator
    # without a generator: the eval_seed one, so evaluation is reproducible
    model.config.eval_samples = 3
    with torch.no_grad():
        unseeded = [model(batch64).logits for _ in range(2)]
        seeded = model(batch64, generator=torch.Generator().manual_seed(model.config.eval_seed)).logits
    torch.testing.assert_close(unseeded[0], unseeded[1], rtol=0, atol=0)
    torch.testing.assert_close(unseeded[0], seeded, rtol=0, atol=0)
    # training draws one structure per forward, whatever eval_samples says
    assert model.train()(batch64, generator=torch.Generator().manual_seed(0)).samples == []


# ------------------------------------------------------------------ deeper hierarchies
def test_per_evolution_budgets_cap_each_levels_merges(batch64):
    import math

    from selab.training.partition_scores import hierarchy_stats

    budgets = [0.1, 0.5, 1.0, 3]
    model = _se_lstm(num_layers=5, evolution={"mode": "greedy", "merge_budget": budgets})
    assert [evo.merge_budget for evo in model.evolutions] == budgets
    with torch.no_grad():
        out = model(batch64)
    assert len(out.levels) == 5
    for level, trace, budget in zip(out.levels, out.traces, budgets):
        edge_image = level.batch[level.edge_index[0]]
        per_image = torch.bincount(edge_image, minlength=2)
        on = torch.bincount(edge_image[trace.edges_on], minlength=2)
        # p > 0.5 everywhere (bias 3): greedy switches on exactly the budget's edges of each image
        cap = [math.ceil(n * budget) if isinstance(budget, float) else min(n, budget) for n in per_image.tolist()]
        assert on.tolist() == cap
    stats = hierarchy_stats(out.levels, batch64["mask"])
    assert [s["num_nodes"] for s in stats] == [g.num_nodes for g in out.levels]
    assert all(a["num_nodes"] > b["num_nodes"] for a, b in zip(stats[:3], stats[1:3]))
    assert stats[3]["nodes_per_image"] == [1, 1]  # budget 1.0 with p > 0.5: each image is one node
    assert all(a["purity"] >= b["purity"] for a, b in zip(stats, stats[1:]))
    with pytest.raises(ValueError, match="merge_budget"):
        ModelConfig(variant="se_lstm", num_layers=3, evolution={"merge_budget": [0.25, 0.5, 0.75]})
