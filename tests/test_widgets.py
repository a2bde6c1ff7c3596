"""selab.workbench.widgets: each explorer is driven as plain Python, by setting control values and checking state.

An exception inside a widget callback would not fail a papermill run, so the callbacks are tested here.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from selab.workbench import evolution_explorer, inference, viz, widgets


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
    from selab.method.superpixels import slic

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

    from selab.method.graph_lstm import wavefront_levels

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

    from selab.method.energy import PartitionEnergy
    from selab.method.superpixels import node_majority_labels
    from selab.model.loss import merge_target
    from selab.method.graph import graph_from_superpixels
    from selab.method.superpixels import slic

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
    from selab.method.mh import metropolis_hastings

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

    from selab.model.config import ModelConfig
    from selab.model.parser import SELabModel

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
    batch = inference.as_batch(sample, n_segments=40)
    modes = [evo.eval_mode for evo in model.evolutions]
    first = inference.evolution_forward(model, batch, structure="mh", energy_source="ground_truth", seed=5)
    again = inference.evolution_forward(model, batch, structure="mh", energy_source="ground_truth", seed=5)
    assert not model.training and [evo.eval_mode for evo in model.evolutions] == modes
    assert model.config.train_order is None
    assert [lv.num_nodes for lv in first.levels] == [lv.num_nodes for lv in again.levels]
    assert all(trace.chains for trace in first.traces), "mh structure records a chain per layer"
    greedy = inference.evolution_forward(model, batch, structure="greedy")
    assert not any(trace.chains for trace in greedy.traces)
    with pytest.raises(ValueError, match="structure"):
        inference.evolution_forward(model, batch, structure="anneal")
    with pytest.raises(ValueError, match="energy"):
        inference.evolution_forward(model, {k: v for k, v in batch.items() if k != "mask"}, energy_source="ground_truth")


def test_level_predictions_add_up_to_the_model_prediction(tiny_se_lstm):
    import torch
    import torch.nn.functional as F

    model, sample = tiny_se_lstm
    batch = inference.as_batch(sample, n_segments=40)
    cnn = {}  # the CNN's own logits, taken where the model computes them, not from the contributions
    handle = model.classifier.register_forward_hook(lambda module, args, out: cnn.setdefault("logits", out))
    try:
        output = inference.evolution_forward(model, batch, structure="greedy")
    finally:
        handle.remove()
    cnn_logits = F.interpolate(cnn["logits"], size=tuple(batch["image"].shape[-2:]), mode="bilinear",
                               align_corners=False)
    contributions = inference.level_contributions(model, output)
    assert len(contributions) == len(output.levels) == 3
    assert all(c.abs().sum() > 0 for c in contributions)  # every level adds something to the logits
    # additive: the CNN's logits plus every level's share are the model's logits
    torch.testing.assert_close(cnn_logits + sum(contributions), output.logits, rtol=0, atol=1e-5)
    predictions = inference.level_predictions(model, output)
    assert len(predictions) == 4
    for count, prediction in enumerate(predictions):  # the CNN alone, then with the first levels added
        partial = cnn_logits + sum(contributions[:count]) if count else cnn_logits
        assert (prediction == partial.argmax(1)).float().mean() > 0.999


def test_evolution_explorer_layer_structure_and_energy(tiny_se_lstm):
    model, sample = tiny_se_lstm
    app = evolution_explorer.EvolutionExplorer(model, sample, structure="mh", energy="ground_truth", seed=1)
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
    from selab.method.superpixels import slic

    labels, _, merge_prob, energy = chain_setup
    model, sample = tiny_se_lstm
    apps = [widgets.SuperpixelExplorer(image, n_segments=50),
            widgets.UpdateOrderExplorer(image, slic(image, 40)),
            widgets.MHChainExplorer(image, labels, merge_prob, energy, num_steps=4),
            evolution_explorer.EvolutionExplorer(model, sample)]
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
    from selab.data.synthetic import SyntheticPersonParts

    dataset = SyntheticPersonParts(3, 48, seed=2)
    return [dataset[index] for index in range(3)]


def test_records_print_as_one_line(tiny_se_lstm, several_samples):
    """Graph, GraphLSTMOutput, MHTrace and EvolutionTrace: a one-line repr, not a wall of tensors."""
    import torch

    from selab.method.graph_lstm import GraphLSTM

    model, _ = tiny_se_lstm
    output = inference.evolution_forward(model, inference.as_batch(several_samples[0], n_segments=40), structure="mh")
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
    app = evolution_explorer.EvolutionExplorer(model, several_samples, structure="greedy", seed=1)
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
    back = evolution_explorer.EvolutionExplorer(model, several_samples, structure="greedy", seed=1, image=first)
    assert app.state["nodes_per_level"] == back.state["nodes_per_level"]

    assert evolution_explorer.EvolutionExplorer(model, several_samples, image=2, structure="greedy").state["image"] == 2
    with pytest.raises(ValueError, match="image"):
        evolution_explorer.EvolutionExplorer(model, several_samples, image=3)
    with pytest.raises(ValueError, match="sample"):
        evolution_explorer.EvolutionExplorer(model, [])
    single = evolution_explorer.EvolutionExplorer(model, several_samples[0], structure="greedy")
    assert single.controls["image"].disabled and single.state["image"] == 0


def test_evolution_explorer_says_when_the_model_is_untrained(tiny_se_lstm):
    model, sample = tiny_se_lstm
    untrained = evolution_explorer.EvolutionExplorer(model, sample, structure="greedy", trained=False)
    assert "untrained" in untrained.figure.get_suptitle() and "untrained model" in untrained.summary()
    trained = evolution_explorer.EvolutionExplorer(model, sample, structure="greedy")
    assert trained.figure.get_suptitle() == "" and "untrained" not in trained.summary()


def test_evolution_explorer_legend_and_a_layout_that_does_not_jump(tiny_se_lstm):
    from selab.classes import CLASS_NAMES

    model, sample = tiny_se_lstm
    app = evolution_explorer.EvolutionExplorer(model, sample, structure="mh", seed=1)

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


def test_photo_sample_reads_names_paths_bytes_and_arrays(tmp_path):
    import io

    import torch
    from PIL import Image

    astronaut = inference.photo_sample("astronaut", 40)
    assert astronaut["image"].shape == (3, 40, 40) and astronaut["id"] == "astronaut" and "mask" not in astronaut
    assert 0.0 <= float(astronaut["image"].min()) and float(astronaut["image"].max()) <= 1.0
    camera = inference.photo_sample("camera", 40)  # a grey photo becomes RGB
    assert torch.equal(camera["image"][0], camera["image"][2])
    pixels = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path / "person.png"
    Image.fromarray(pixels).save(path)
    from_path = inference.photo_sample(str(path), 24)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    from_bytes = inference.photo_sample(buffer.getvalue(), 24, name="up")
    from_array = inference.photo_sample(pixels, 24)
    assert from_path["id"] == "person" and from_bytes["id"] == "up"
    assert torch.allclose(from_path["image"], from_bytes["image"]) and torch.allclose(from_path["image"], from_array["image"])
    mask = np.zeros((30, 50), dtype=np.int64)
    mask[:, 25:] = 2
    with_mask = inference.photo_sample(pixels, 10, mask=mask)
    assert with_mask["mask"].shape == (10, 10) and set(with_mask["mask"].unique().tolist()) == {0, 2}
    with pytest.raises(ValueError, match="neither an image file nor a scikit-image sample"):
        inference.photo_sample("no_such_photo", 24)
    with pytest.raises(ValueError, match="cannot read notes.txt"):
        inference.photo_sample(b"not an image", 24, name="notes.txt")
    with pytest.raises(ValueError, match="mask"):
        inference.photo_sample(pixels, 10, mask=np.zeros((3, 3)))
    assert [s["id"] for s in inference.photo_samples("astronaut, camera", 16)] == ["astronaut", "camera"]
    with pytest.raises(ValueError, match="at least one photo"):
        inference.photo_samples(" ", 16)
    with pytest.raises(ValueError, match="masks"):
        inference.photo_samples("astronaut,camera", 16, masks="a.png")


def test_level_inputs_are_what_the_first_layer_read(tiny_se_lstm):
    import torch

    model, sample = tiny_se_lstm
    batch = inference.as_batch(sample, n_segments=40)
    inputs = inference.level_inputs(model, batch)
    graph, output = inputs["graph"], inputs["output"]
    assert inputs["x"].shape == (graph.num_nodes, model.config.hidden_channels)
    assert torch.allclose(inputs["confidence"].sum(1), torch.ones(graph.num_nodes))
    assert torch.equal(inputs["rank"], output.ranks[0])
    # the first layer run again on the captured inputs gives the model's own first-level states
    with torch.no_grad():
        again = model.layers[0](inputs["x"], graph.edge_index, inputs["rank"], update_schedule=model.config.update_schedule)
    assert torch.allclose(again.h, output.states[0], atol=1e-6)
    assert not model.layers[0]._forward_pre_hooks and not model.node_input._forward_pre_hooks


def test_merge_colour_floor_starts_the_scale_below_nearly_every_value():
    assert evolution_explorer.merge_colour_floor(np.linspace(0.63, 1.0, 100)) == pytest.approx(0.6)
    assert evolution_explorer.merge_colour_floor(np.linspace(0.0, 1.0, 100)) == 0.0
    assert evolution_explorer.merge_colour_floor(np.ones(10)) == pytest.approx(0.9), "a scale never collapses"


def test_evolution_explorer_on_photos_without_ground_truth(tiny_se_lstm, several_samples):
    """A photo without a mask: prediction energy whatever the dropdown says, a panel saying "no ground
    truth", NaN accuracy; masked and unmasked samples side by side."""
    model, _ = tiny_se_lstm
    photo = inference.photo_sample("astronaut", 48)
    app = evolution_explorer.EvolutionExplorer(model, [photo, several_samples[0]], structure="mh", energy="ground_truth",
                                    image=0)
    assert app.state["energy"] == "prediction" and not app.state["has_ground_truth"]
    assert np.isnan(app.state["pixel_accuracy"]) and "no ground truth" in app.summary()
    truth_panel = app.figure.axes[4]
    assert truth_panel.get_title() == "ground truth" and "no ground truth" in truth_panel.texts[0].get_text()
    app.controls["image"].value = 1  # the synthetic sample has a mask: the dropdown's energy holds again
    assert app.state["energy"] == "ground_truth" and app.state["has_ground_truth"]
    assert not np.isnan(app.state["pixel_accuracy"]) and "no ground truth" not in app.summary()
    assert app.figure.axes[4].get_title() == "ground truth" and not app.figure.axes[4].texts


def test_evolution_explorer_upload_adds_and_shows_a_photo(tiny_se_lstm):
    import datetime
    import io

    from PIL import Image

    model, sample = tiny_se_lstm
    now = datetime.datetime.now(datetime.timezone.utc)
    app = evolution_explorer.EvolutionExplorer(model, sample, structure="greedy")
    assert app.upload in app.widget.children[0].children and app.controls["image"].disabled
    pixels = (inference.photo_sample("astronaut", 64)["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    renders = app.renders
    app.upload.value = ({"name": "me.png", "type": "image/png", "size": len(buffer.getvalue()),
                         "content": memoryview(buffer.getvalue()), "last_modified": now},)
    assert app.state["image"] == 1 and app.renders > renders and app.error is None
    assert not app.controls["image"].disabled and app.controls["image"].options[1][0].startswith("1: me (")
    assert app.batch["image"].shape == (1, 3, 48, 48), "resized to the other samples' size"
    assert app.state["nodes_per_level"][0] == app.num_superpixels[1] and not app.state["has_ground_truth"]
    with pytest.raises(ValueError, match="cannot read"):
        app.upload.value = ({"name": "bad.png", "type": "image/png", "size": 3, "content": memoryview(b"abc"),
                             "last_modified": now},)
    assert "cannot read" in app.readout.value and len(app.batches) == 2
    assert app.upload.value == (), "the upload is cleared, so that the same file can be sent again"
    assert app.add_photo("camera") == 2 and app.state["image"] == 2


def test_evolution_explorer_greedy_panel_and_hierarchy(tiny_se_lstm):
    model, _ = tiny_se_lstm
    app = evolution_explorer.EvolutionExplorer(model, inference.photo_sample("astronaut", 48), structure="greedy")
    nodes = app.state["nodes_per_level"]
    assert nodes[0] > 10, "the test needs a graph"
    merged = app.state["merged_edges"]
    assert merged == int(app.state["edges_on"].sum()) and nodes[0] - nodes[1] <= merged
    structure_panel = app.figure.axes[2]
    assert structure_panel.get_title() == f"greedy, layer 0: {merged} edges merged"
    assert structure_panel.get_xlabel() == "merge probability"
    hierarchy = app.figure.axes[5]
    assert [len(row.get_paths()) for row in hierarchy.collections] == nodes, "one block per node and level"
    classes = app.node_classes()
    assert [len(c) for c in classes] == nodes
    # the top level's majority classes are those of the model's prediction inside each top node
    top = app.output.levels[-1].assignment[0].numpy()
    for node in np.unique(top):
        values, counts = np.unique(app.predictions[-1][top == node], return_counts=True)
        assert classes[-1][node] == values[counts.argmax()]
    app.controls["layer"].value = 1
    assert f"{app.state['merged_edges']} of {app.state['num_edges']} edges merged" in app.summary()
    app.controls["layer"].value = 2
    assert app.state["merged_edges"] == -1 and "edges merged" not in app.summary()
