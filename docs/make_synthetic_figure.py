"""Draw docs/synthetic_samples.png: built-in synthetic samples over their label overlays.

Run: ``.venv/bin/python docs/make_synthetic_figure.py`` (deterministic: seed 0, images 0..5).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from selab.classes import CLASS_COLORS, CLASS_NAMES, colorize  # noqa: E402
from selab.data.synthetic import render_sample  # noqa: E402

NUM, SIZE, SEED = 6, 160, 0


def main(out: Path = Path(__file__).with_name("synthetic_samples.png")) -> Path:
    fig, axes = plt.subplots(2, NUM, figsize=(2.0 * NUM, 4.3))
    for i in range(NUM):
        sample = render_sample(SEED, i, SIZE)
        overlay = np.where(sample.mask[..., None] > 0, 0.35 * sample.image + 0.65 * colorize(sample.mask) / 255,
                           0.5 * sample.image)
        axes[0, i].imshow(sample.image)
        axes[1, i].imshow(overlay)
        axes[0, i].set_title(f"seed {SEED}, image {i}", fontsize=8)
        for ax in axes[:, i]:
            ax.set_axis_off()
    handles = [Patch(color=CLASS_COLORS[c] / 255, label=name) for c, name in enumerate(CLASS_NAMES) if c]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main())
