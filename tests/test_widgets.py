"""selab.widgets: each explorer is driven as plain Python, by setting control values and checking state.

An exception inside a widget callback would not fail a papermill run, so the callbacks are tested here.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from selab import viz, widgets


@pytest.fixture(scope="module")
def image():
    return viz.demo_image("astronaut", 96)


def test_superpixel_explorer_recomputes_graph_and_figure(image):
    app = widgets.SuperpixelExplorer(image, n_segments=50, compactness=10.0)
    assert app.error is None and app.renders == 1
    assert app.controls["n_segments"].description == "superpixels"
    first_png, first_nodes = app.png, app.state["num_nodes"]
    assert first_png.startswith(b"\x89PNG")

    app.controls["n_segments"].value = 200
    assert app.state["num_nodes"] > first_nodes
    assert app.state["labels"].max() + 1 == app.state["num_nodes"]
    assert app.state["edge_index"].shape == (2, app.state["num_edges"])
    assert app.png != first_png and app.renders == 2
    assert f"num_nodes = {app.state['num_nodes']}" in app.readout.value


def test_superpixel_explorer_compactness_changes_the_regions(image):
    app = widgets.SuperpixelExplorer(image, n_segments=100, compactness=1.0)
    loose = app.state["labels"]
    app.controls["compactness"].value = 100.0
    assert app.state["compactness"] == pytest.approx(100.0)
    assert not np.array_equal(app.state["labels"], loose)


def test_superpixel_explorer_has_a_widget_to_display(image):
    app = widgets.SuperpixelExplorer(image, n_segments=50)
    bundle = app._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert app.image in app.widget.children


def test_a_failing_callback_is_reported_and_raised(image):
    app = widgets.SuperpixelExplorer(image, n_segments=50)

    def broken():
        raise RuntimeError("boom")

    app.compute = broken
    with pytest.raises(RuntimeError, match="boom"):
        app.controls["n_segments"].value = 75
    assert app.error == "RuntimeError: boom" and "boom" in app.readout.value


@pytest.fixture(scope="module")
def small_graph(image):
    from selab.superpixels import slic

    labels = slic(image, n_segments=60)
    num_nodes = int(labels.max()) + 1
    confidence = np.random.default_rng(0).dirichlet(np.ones(7), size=num_nodes).astype(np.float32)
    return labels, confidence


def test_update_order_by_name_is_a_permutation_and_rejects_unknown_names():
    import torch

    edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])
    pos = torch.tensor([[0.0, 3.0], [0.0, 2.0], [0.0, 1.0], [0.0, 0.0]])
    assert widgets.update_order("bfs", edge_index, pos).tolist() == [3, 2, 1, 0]  # from the left-most node
    assert sorted(widgets.update_order("random", edge_index, pos, seed=3).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="name"):
        widgets.update_order("zigzag", edge_index, pos)
    with pytest.raises(ValueError, match="confidence"):
        widgets.update_order("confidence", edge_index, pos)


def test_update_order_explorer_follows_the_order_and_node(image, small_graph):
    import torch

    from selab.graph_lstm import wavefront_levels

    labels, confidence = small_graph
    app = widgets.UpdateOrderExplorer(image, labels, confidence=confidence, order="confidence")
    assert app.controls["order"].description == "order" and app.error is None
    png = app.png
    for name in widgets.ORDERS:
        app.controls["order"].value = name
        rank = torch.as_tensor(app.state["rank"])
        expected = widgets.update_order(name, app.graph.edge_index, app.graph.pos, confidence)
        assert torch.equal(rank, expected)
        assert app.state["num_levels"] == int(wavefront_levels(app.graph.edge_index, rank).max()) + 1
    assert app.png != png

    node = app.state["node"]
    neighbour = int(app.state["neighbours"][0])
    app.controls["node"].value = neighbour
    assert app.state["node"] == neighbour and node in app.state["neighbours"]
    assert app.state["degree"] == len(app.state["neighbour_forget"])
    rank = app.state["rank"]
    assert app.state["neighbours_before"] == int((rank[app.state["neighbours"]] < rank[neighbour]).sum())
    assert 0.0 < app.state["input_gate"] < 1.0


def test_update_order_explorer_without_confidence_offers_no_confidence_order(image, small_graph):
    labels, _ = small_graph
    app = widgets.UpdateOrderExplorer(image, labels)
    assert "confidence" not in app.controls["order"].options and app.state["order"] == "bfs"
    with pytest.raises(ValueError, match="confidence"):
        widgets.UpdateOrderExplorer(image, labels, confidence=np.ones((3, 7)))


@pytest.fixture(scope="module")
def chain_setup(image):
    import torch

    from selab.evolve import PartitionEnergy, merge_target, node_majority_labels
    from selab.graph import graph_from_superpixels
    from selab.superpixels import slic

    labels = slic(image, n_segments=40)
    graph = graph_from_superpixels(labels)
    mask = torch.as_tensor((np.arange(image.shape[1]) > image.shape[1] // 2).astype(np.int64))
    mask = mask.expand(image.shape[0], -1)[None]
    node_labels = node_majority_labels(mask, graph.assignment, graph.num_nodes)
    target = merge_target(graph.edge_index, node_labels)
    merge_prob = 0.1 + 0.8 * target
    energy = PartitionEnergy(node_labels=node_labels, size=graph.size, num_classes=7)
    return labels, graph, merge_prob, energy


def test_mh_table_tracks_the_state_energy():
    from types import SimpleNamespace

    steps = [SimpleNamespace(energy=e, log_q=-1.0, alpha=0.5, accepted=a, num_clusters=3)
             for e, a in [(5.0, False), (4.0, True), (6.0, False), (3.0, True)]]
    table = widgets.mh_table(SimpleNamespace(steps=steps, initial_energy=9.0))
    assert table["state_energy"].tolist() == [9.0, 4.0, 4.0, 3.0]
    assert table["accepted"].tolist() == [False, True, False, True]


def test_mh_chain_explorer_steps_and_reruns_at_another_temperature(image, chain_setup):
    from selab.evolve import metropolis_hastings

    labels, graph, merge_prob, energy = chain_setup
    app = widgets.MHChainExplorer(image, labels, merge_prob, energy, num_steps=12, temperature=1.0, seed=3)
    assert app.controls["temperature"].description == "temperature" and app.error is None
    import torch

    _, expected = metropolis_hastings(graph.edge_index, merge_prob, energy, 12, temperature=1.0,
                                      generator=torch.Generator().manual_seed(3))
    assert app.state["acceptance_rate"] == expected.acceptance_rate
    assert app.state["final_energy"] == pytest.approx(expected.energy)

    png = app.png
    app.controls["step"].value = 7
    assert app.state["alpha"] == expected.steps[7].alpha and app.state["energy"] == expected.steps[7].energy
    assert int(app.state["proposal_cluster"].max()) + 1 == expected.steps[7].num_clusters
    assert app.png != png

    app.controls["temperature"].value = 1000.0
    _, hot = metropolis_hastings(graph.edge_index, merge_prob, energy, 12, temperature=1000.0,
                                 generator=torch.Generator().manual_seed(3))
    assert app.state["temperature"] == 1000.0
    assert app.state["table"]["alpha"].tolist() == [step.alpha for step in hot.steps]


def test_mh_chain_explorer_rejects_a_wrong_number_of_probabilities(image, chain_setup):
    labels, _, merge_prob, energy = chain_setup
    with pytest.raises(ValueError, match="merge_prob"):
        widgets.MHChainExplorer(image, labels, merge_prob[:-1], energy)


@pytest.fixture(scope="module")
def tiny_se_lstm():
    import torch

    from selab.model import ModelConfig, SELabModel

    torch.manual_seed(0)
    config = ModelConfig(variant="se_lstm", num_layers=3, feature_channels=16, hidden_channels=16, n_segments=40,
                         evolution={"num_proposals": 16})
    model = SELabModel(config).eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 48, 48, generator=generator)
    mask = torch.zeros(48, 48, dtype=torch.long)
    mask[10:40, 15:30] = 2  # a torso-like block
    return model, {"image": image, "mask": mask}


def test_evolution_forward_restores_the_model_and_is_seeded(tiny_se_lstm):
    model, sample = tiny_se_lstm
    batch = widgets.as_batch(sample, n_segments=40)
    modes = [evo.eval_mode for evo in model.evolutions]
    first = widgets.evolution_forward(model, batch, structure="mh", energy="ground_truth", seed=5)
    again = widgets.evolution_forward(model, batch, structure="mh", energy="ground_truth", seed=5)
    assert not model.training and [evo.eval_mode for evo in model.evolutions] == modes
    assert model.config.train_order is None
    assert [lv.num_nodes for lv in first.levels] == [lv.num_nodes for lv in again.levels]
    assert all(trace.chains for trace in first.traces), "mh structure records a chain per layer"
    greedy = widgets.evolution_forward(model, batch, structure="greedy")
    assert not any(trace.chains for trace in greedy.traces)
    with pytest.raises(ValueError, match="structure"):
        widgets.evolution_forward(model, batch, structure="anneal")
    with pytest.raises(ValueError, match="energy"):
        widgets.evolution_forward(model, {k: v for k, v in batch.items() if k != "mask"}, energy="ground_truth")


def test_level_predictions_add_up_to_the_model_prediction(tiny_se_lstm):
    import torch

    model, sample = tiny_se_lstm
    output = widgets.evolution_forward(model, widgets.as_batch(sample, n_segments=40), structure="greedy")
    contributions = widgets.level_contributions(model, output)
    assert len(contributions) == len(output.levels) == 3
    predictions = widgets.level_predictions(model, output)
    assert len(predictions) == 4 and torch.equal(predictions[-1], output.logits.argmax(1))


def test_evolution_explorer_layer_structure_and_energy(tiny_se_lstm):
    model, sample = tiny_se_lstm
    app = widgets.EvolutionExplorer(model, sample, structure="mh", energy="ground_truth", seed=1)
    assert app.controls["layer"].description == "layer" and app.error is None
    nodes = app.state["nodes_per_level"]
    assert app.controls["layer"].max == len(nodes) - 1 == 2
    assert all(a >= b for a, b in zip(nodes, nodes[1:]))
    assert 0.0 <= app.state["acceptance_rate"] <= 1.0
    png, forward = app.png, app.output

    app.controls["layer"].value = 2
    assert app.state["num_nodes"] == nodes[2] and np.isnan(app.state["acceptance_rate"])  # top: no chain
    assert app.state["merge_prob"].size == 0
    assert int(app.state["assignment"].max()) + 1 == nodes[2]
    assert app.output is forward, "moving the slider does not rerun the model"
    assert app.png != png

    app.controls["layer"].value = 1
    assert app.state["merge_prob"].shape == (app.state["num_edges"],)
    app.controls["structure"].value = "none"
    assert app.output is not forward and app.state["nodes_per_level"] == [nodes[0]] * 3
    app.controls["energy"].value = "prediction"
    app.controls["structure"].value = "mh"
    assert app.state["energy"] == "prediction" and app.error is None
