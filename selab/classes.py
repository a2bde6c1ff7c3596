"""The label set of PASCAL-Person-Part and the one colour per class used everywhere in selab.

The ids and their order are the benchmark's (Xia et al.; docs/data.md describes the dataset):
0 background, 1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg, 6 lower leg.
The colours are a selab decision: chosen to be distinguishable, with upper/lower limbs in
light/dark shades of one hue so that a parse reads like a body at a glance.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")
NUM_CLASSES: int = len(CLASS_NAMES)
BACKGROUND: int = 0

# RGB in 0..255, one row per class id.
CLASS_COLORS: np.ndarray = np.array(
    [
        [0, 0, 0],  # background
        [230, 25, 75],  # head: red
        [255, 200, 20],  # torso: yellow
        [60, 120, 255],  # upper arm: light blue
        [10, 40, 150],  # lower arm: dark blue
        [60, 200, 90],  # upper leg: light green
        [10, 110, 40],  # lower leg: dark green
    ],
    dtype=np.uint8,
)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Colour a label map with :data:`CLASS_COLORS`.

    Parameters
    ----------
    mask : ndarray of int, shape (H, W)
        Class ids in ``0 .. NUM_CLASSES - 1``.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> colorize(np.array([[0, 1]])).shape
    (1, 2, 3)
    """
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() >= NUM_CLASSES):
        raise ValueError(
            f"colorize: mask holds ids {mask.min()}..{mask.max()}, expected 0..{NUM_CLASSES - 1}"
        )
    return CLASS_COLORS[mask]
