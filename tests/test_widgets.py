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


def test_every_control_shows_its_whole_description(image, chain_setup, tiny_se_lstm):
    from selab.superpixels import slic

    labels, _, merge_prob, energy = chain_setup
    model, sample = tiny_se_lstm
    apps = [widgets.SuperpixelExplorer(image, n_segments=50),
            widgets.UpdateOrderExplorer(image, slic(image, 40)),
            widgets.MHChainExplorer(image, labels, merge_prob, energy, num_steps=4),
            widgets.EvolutionExplorer(model, sample)]
    for app in apps:
        for name, control in app.controls.items():
            assert control.style.description_width == "initial", (type(app).__name__, name)


def test_readout_wraps_only_between_fields(image):
    import html
    import re

    app = widgets.SuperpixelExplorer(image, n_segments=50)
    spans = re.findall(r'<span style="white-space:nowrap">(.*?)</span>', app.readout.value)
    assert [html.unescape(s) for s in spans] == app.summary_fields()
    assert html.unescape(re.sub(r"<[^>]+>", "", app.readout.value)) == app.summary()
    assert "num_nodes = " in app.summary() and len(spans) >= 5


@pytest.fixture(scope="module")
def several_samples():
    """Three synthetic images; SLIC gives them different numbers of superpixels."""
    from selab.synthetic import SyntheticPersonParts

    dataset = SyntheticPersonParts(3, 48, seed=2)
    return [dataset[index] for index in range(3)]


def test_records_print_as_one_line(tiny_se_lstm, several_samples):
    """Graph, GraphLSTMOutput, MHTrace and EvolutionTrace: a one-line repr, not a wall of tensors."""
    import torch

    from selab.graph_lstm import GraphLSTM

    model, _ = tiny_se_lstm
    output = widgets.evolution_forward(model, widgets.as_batch(several_samples[0], n_segments=40), structure="mh")
    assert output.levels[1].num_nodes < output.levels[0].num_nodes, "the test needs a level that merged"
    level = output.levels[0]
    lstm = GraphLSTM(2, 8)(level.pos, level.edge_index, torch.arange(level.num_nodes))
    texts = [repr(level), repr(output.levels[1]), repr(lstm), repr(output.traces[0]),
             repr(output.traces[0].chains[0])]
    for text in texts:
        assert "\n" not in text and "tensor(" not in text and len(text) < 160, text
    assert texts[0] == f"Graph({level.num_nodes} nodes, {level.num_edges} edges, 1 image, 48x48)"
    assert texts[1].startswith(f"Graph({output.levels[1].num_nodes} node")
    assert f"from {level.num_nodes} superpixels" in texts[1]
    assert texts[2].startswith(f"GraphLSTMOutput({level.num_nodes} nodes, 8 channels")
    assert texts[3].startswith("EvolutionTrace(mh, 1 image") and texts[4].startswith("MHTrace(16 steps")


def test_evolution_explorer_image_selector(tiny_se_lstm, several_samples):
    model, _ = tiny_se_lstm
    app = widgets.EvolutionExplorer(model, several_samples, structure="greedy", seed=1)
    counts = app.num_superpixels
    assert len(counts) == 3 and len(set(counts)) > 1, "the test needs images of different graph sizes"
    first = app.state["image"]
    assert counts[first] == max(counts), "the first view is the image with the most superpixels"
    assert app.state["nodes_per_level"][0] == counts[first]
    selector = app.controls["image"]
    assert selector.description == "image" and not selector.disabled
    assert [value for _, value in selector.options] == [0, 1, 2]
    assert all(f"({count} superpixels)" in label for (label, _), count in zip(selector.options, counts))

    other = (first + 1) % 3
    app.controls["layer"].value = 1
    selector.value = other
    assert app.state["image"] == other and app.state["nodes_per_level"][0] == counts[other]
    assert np.array_equal(app.mask, several_samples[other]["mask"].numpy())
    assert app.state["layer"] == 1 and app.error is None
    selector.value = first
    back = widgets.EvolutionExplorer(model, several_samples, structure="greedy", seed=1, image=first)
    assert app.state["nodes_per_level"] == back.state["nodes_per_level"]

    assert widgets.EvolutionExplorer(model, several_samples, image=2, structure="greedy").state["image"] == 2
    with pytest.raises(ValueError, match="image"):
        widgets.EvolutionExplorer(model, several_samples, image=3)
    no_mask = {"image": several_samples[0]["image"]}
    with pytest.raises(ValueError, match="mask"):
        widgets.EvolutionExplorer(model, [several_samples[0], no_mask])
    with pytest.raises(ValueError, match="sample"):
        widgets.EvolutionExplorer(model, [])
    single = widgets.EvolutionExplorer(model, several_samples[0], structure="greedy")
    assert single.controls["image"].disabled and single.state["image"] == 0


def test_evolution_explorer_says_when_the_model_is_untrained(tiny_se_lstm):
    model, sample = tiny_se_lstm
    untrained = widgets.EvolutionExplorer(model, sample, structure="greedy", trained=False)
    assert "untrained" in untrained.figure.get_suptitle() and "untrained model" in untrained.summary()
    trained = widgets.EvolutionExplorer(model, sample, structure="greedy")
    assert trained.figure.get_suptitle() == "" and "untrained" not in trained.summary()


def test_evolution_explorer_legend_and_a_layout_that_does_not_jump(tiny_se_lstm):
    from selab.classes import CLASS_NAMES

    model, sample = tiny_se_lstm
    app = widgets.EvolutionExplorer(model, sample, structure="mh", seed=1)

    def layout():
        return [tuple(np.round(ax.get_position().bounds, 6)) for ax in app.figure.axes[:6]], \
            [ax.axison for ax in app.figure.axes[:6]]

    (legend,) = app.figure.legends
    assert [t.get_text() for t in legend.get_texts()] == list(CLASS_NAMES)
    bottom = layout()
    top_layer = app.controls["layer"].max
    app.controls["layer"].value = top_layer
    assert np.isnan(app.state["acceptance_rate"]) and app.state["merge_prob"].size == 0
    assert layout() == bottom, "panels moved or resized at the top layer"
    mh_panel = app.figure.axes[2]
    assert mh_panel.get_xlabel() == "MH step" and "no further evolution" in mh_panel.texts[0].get_text()
    app.controls["structure"].value = "none"
    assert layout() == bottom and len(app.figure.legends) == 1
