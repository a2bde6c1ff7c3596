"""Draw docs/predict_astronaut.png: ``selab predict --hierarchy`` on scikit-image's astronaut with the shipped
``se_lstm_deep``; the overlay, level 0 (the superpixels), level 3 and the top level, side by side at 320 px.

Run from the repository root: ``python docs/make_predict_figure.py``.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import skimage.data
import skimage.io
from PIL import Image

PANELS = ("overlay", "level0", "level3", "level4")
SIZE, GAP = 320, 10


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        photo, out = Path(scratch) / "astronaut.png", Path(scratch) / "parsed"
        skimage.io.imsave(photo, skimage.data.astronaut())
        subprocess.run([sys.executable, "-m", "selab", "predict", str(photo), "--model", "se_lstm_deep", "--out", str(out),
                        "--hierarchy", "--quiet"], check=True, stdout=subprocess.DEVNULL)
        panels = [Image.open(out / f"astronaut_{name}.png").convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
                  for name in PANELS]
    figure = Image.new("RGB", (len(panels) * (SIZE + GAP) - GAP, SIZE), "white")
    for index, panel in enumerate(panels):
        figure.paste(panel, (index * (SIZE + GAP), 0))
    target = Path(__file__).resolve().parent / "predict_astronaut.png"
    figure.save(target, optimize=True)
    print(target)


if __name__ == "__main__":
    main()
