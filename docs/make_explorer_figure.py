"""Draw docs/explorer_astronaut.png: the evolution explorer on scikit-image's astronaut photo.

The shipped ``se_lstm_deep`` (``selab.workbench.pretrained.load``), its test-time (greedy) structure, level 3 of the
hierarchy; the same figure notebook 06 shows with its defaults, drawn without a browser.

Run: ``.venv/bin/python docs/make_explorer_figure.py`` (deterministic; offline).
"""

from pathlib import Path

from selab.workbench import pretrained
from selab.workbench.evolution_explorer import EvolutionExplorer
from selab.workbench.inference import photo_sample

LAYER = 3  # level 3: tens of nodes, the parts taking shape


def main(out: Path = Path(__file__).with_name("explorer_astronaut.png")) -> Path:
    model, record = pretrained.load("se_lstm_deep")
    sample = photo_sample("astronaut", int(record["train_config"]["image_size"]))
    app = EvolutionExplorer(model, sample, structure="greedy", energy="prediction")
    app.controls["layer"].value = LAYER
    app.figure.savefig(out, dpi=90)
    print(f"{out}: {app.summary()}")
    return out


if __name__ == "__main__":
    main()
