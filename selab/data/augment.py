"""The paper's training augmentation, applied jointly to an image, its mask and its cached superpixels.

Liang et al. (ECCV 2016) train with "random object crops, flips, colour-intensity scaling and rotation";
selab adds a random scale. :class:`Augmentation` turns one row of uniform draws into one sample's
transform, so that a run draws every sample's row for an epoch up front from the generator of
``(seed, epoch)`` (:mod:`selab.seeds`, stream ``AUGMENT``): the same epoch gets the same transforms,
whatever the order, the workers or an interruption (:class:`selab.training.loaders.TrainingData`).

The geometric part is one affine map from the S x S output to the source, built from:

* a **crop around the people**: a square (in the frame of the S x S training image, where evaluation
  sees the image too) centred on the box of the mask's foreground (non-background, non-ignored pixels),
  of side ``context`` times the box's longer side, its centre moved by up to ``jitter`` of the side;
  an image without a person is cropped around its centre;
* a **random scale**: the side divided by ``scale`` (above 1 zooms in);
* a **small rotation** of the window about its centre, by up to ``max_degrees``;
* a **horizontal flip** (PASCAL-Person-Part's classes, :mod:`selab.classes`, have no left/right
  classes, so a flip swaps no class).

selab decision: the rotated window always lies inside the image (its side and centre are clamped), so no
pixel is invented and every label is real: a scale below the full image (zooming out, which needs
padding) is not done. The ranges are selab's; the paper does not give them.

The image is sampled bilinearly from the full-resolution image (antialiased first where the window
shrinks it), the mask with nearest neighbour from the full-resolution mask, the superpixels with nearest
neighbour from the cached S x S SLIC label map (one SLIC per image and size, not one per augmented sample)
and then :func:`renumber` -ed. **Colour-intensity scaling** multiplies the image by
one factor in ``intensity`` and one per channel in ``1 +- channel``.

Examples
--------
>>> augmentation = Augmentation()
>>> draws = augmentation.draws(1, torch.Generator().manual_seed(0))
>>> image, mask = torch.rand(3, 60, 80), torch.zeros(60, 80, dtype=torch.long)
>>> mask[10:50, 20:40] = 2
>>> superpixels = torch.arange(32 * 32).reshape(32, 32) // 64
>>> out = augmentation(image, mask, superpixels, 32, draws[0], flip=True)
>>> out["image"].shape, out["mask"].shape, out["superpixels"].shape
(torch.Size([3, 32, 32]), torch.Size([32, 32]), torch.Size([32, 32]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import label as connected_regions

from selab.classes import BACKGROUND

# One sample's uniform draws: context, scale, jitter y, jitter x, angle, intensity, three channel factors.
NUM_DRAWS = 9


def renumber(superpixels: torch.Tensor) -> torch.Tensor:
    """A transformed superpixel map as a partition numbered ``0..N-1``, each label one connected region.

    A crop or a rotation can cut a superpixel into pieces that no longer touch (and nearest-neighbour
    sampling can leave a thin part behind). selab decision: every 4-connected piece becomes a node of its
    own, as SLIC's own superpixels are connected regions: a node is then one place in the image, and its
    edges (:func:`selab.method.superpixels.adjacency`, also 4-connected) join regions that touch. Numbered in
    raster order of their first pixel. Measured on 20 synthetic 96 px images (about 64 superpixels each, 3
    windows each): the splitting adds about 3 nodes per image, about 2 of them pieces of at most 2 pixels,
    which stay nodes (not merged into a neighbour).

    Examples
    --------
    >>> renumber(torch.tensor([[5, 5, 9], [9, 5, 9]]))
    tensor([[0, 0, 1],
            [2, 0, 1]])
    """
    # skimage labels connected regions of equal value (1..N); background=-1 keeps every value a region.
    regions = connected_regions(superpixels.cpu().numpy(), background=-1, connectivity=1)
    return torch.from_numpy(regions.astype(np.int64) - 1)


def person_box(mask: torch.Tensor, ignore_index: int | None = None) -> tuple[float, float, float, float] | None:
    """The box of the mask's foreground as ``(y0, y1, x0, x1)`` in normalised coordinates [-1, 1], or ``None``.

    Foreground: every class but background, without ``ignore_index`` pixels. Pixel edges, not centres:
    a mask entirely foreground gives ``(-1, 1, -1, 1)``.
    """
    foreground = mask != BACKGROUND
    if ignore_index is not None:
        foreground &= mask != ignore_index
    rows = torch.nonzero(foreground.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(foreground.any(dim=0)).flatten()
    H, W = mask.shape
    return (2 * int(rows[0]) / H - 1, 2 * (int(rows[-1]) + 1) / H - 1,
            2 * int(cols[0]) / W - 1, 2 * (int(cols[-1]) + 1) / W - 1)


@dataclass(frozen=True)
class Augmentation:
    """Crop around the people, scale, rotate, flip and scale the colours of one training sample.

    Parameters
    ----------
    context : (float, float)
        Range of the crop's side over the person box's longer side.
    scale : (float, float)
        Range of the zoom (the side is divided by it).
    jitter : float
        The crop's centre moves by up to this fraction of its side.
    max_degrees : float
        Rotation range, +- degrees.
    intensity : (float, float)
        Range of the factor on all channels.
    channel : float
        Each channel's own factor lies in ``1 +- channel``.
    """

    context: tuple[float, float] = (1.1, 1.8)
    scale: tuple[float, float] = (0.75, 1.25)
    jitter: float = 0.2
    max_degrees: float = 10.0
    intensity: tuple[float, float] = (0.75, 1.25)
    channel: float = 0.1

    def __post_init__(self):
        for name in ("context", "scale", "intensity"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"Augmentation.{name}: expected 0 < low <= high, got {getattr(self, name)}")
        if not 0 <= self.jitter or not 0 <= self.max_degrees < 45 or not 0 <= self.channel < 1:
            raise ValueError(f"Augmentation: expected jitter >= 0, 0 <= max_degrees < 45, 0 <= channel < 1; got "
                             f"{self.jitter}, {self.max_degrees}, {self.channel}")

    def draws(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform draws [n, :data:`NUM_DRAWS`] in [0, 1): one row per sample, from ``generator``."""
        return torch.rand(n, NUM_DRAWS, generator=generator, dtype=torch.float64)

    def window(self, mask: torch.Tensor, u: torch.Tensor, flip: bool = False,
               ignore_index: int | None = None) -> torch.Tensor:
        """The affine map [2, 3] (``F.affine_grid``'s ``theta``) from output to source coordinates."""
        u = [float(v) for v in u[:5]]

        def between(low, high, t):
            return low + (high - low) * t

        box = person_box(mask, ignore_index)
        if box is None:
            cy, cx, side = 0.0, 0.0, 2.0  # no person: the image's centre, at its full size
        else:
            y0, y1, x0, x1 = box
            cy, cx, side = (y0 + y1) / 2, (x0 + x1) / 2, max(y1 - y0, x1 - x0) * between(*self.context, u[0])
        side /= between(*self.scale, u[1])
        cy += self.jitter * side * between(-1, 1, u[2])
        cx += self.jitter * side * between(-1, 1, u[3])
        angle = math.radians(between(-self.max_degrees, self.max_degrees, u[4]))
        cos, sin = math.cos(angle), math.sin(angle)
        # Keep the rotated square inside [-1, 1]^2: its half-extent along each axis is half * (|cos| + |sin|).
        spread = abs(cos) + abs(sin)
        half = min(side / 2, 1.0 / spread)
        reach = half * spread
        cy, cx = min(max(cy, -1 + reach), 1 - reach), min(max(cx, -1 + reach), 1 - reach)
        mirror = -1.0 if flip else 1.0
        return torch.tensor([[half * cos * mirror, -half * sin, cx],
                             [half * sin * mirror, half * cos, cy]], dtype=torch.float32)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, superpixels: torch.Tensor | None, size: int,
                 u: torch.Tensor, flip: bool = False, ignore_index: int | None = None) -> dict:
        """One sample, transformed: ``image`` [3,S,S], ``mask`` [S,S] and ``superpixels`` [S,S] (renumbered).

        ``image`` [3,H,W] and ``mask`` [H,W] at any resolution; ``superpixels`` the label map of the same
        image at any resolution (the cached S x S one) or ``None``; ``u`` one row of :meth:`draws`.
        """
        theta = self.window(mask, u, flip, ignore_index)
        grid = F.affine_grid(theta[None], [1, 1, size, size], align_corners=False)
        # Source pixels per output pixel along each axis: shrink the source first where it exceeds one
        # (antialiased, as the plain resize), so that bilinear sampling does not alias.
        H, W = image.shape[-2:]
        half = float(torch.linalg.vector_norm(theta[:, 0]))  # the window's half-side, in normalised units
        step_y, step_x = half * H / size, half * W / size
        source = image[None].float()
        if step_y > 1 or step_x > 1:
            target = (max(1, round(H / max(step_y, 1))), max(1, round(W / max(step_x, 1))))
            source = F.interpolate(source, size=target, mode="bilinear", align_corners=False, antialias=True)
        out_image = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        low, high = self.intensity
        factors = (low + (high - low) * float(u[5])) * (1 + self.channel * (2 * u[6:9].double() - 1))
        out_image = (out_image * factors.float().view(3, 1, 1)).clamp_(0, 1)
        out = {"image": out_image, "mask": _nearest(mask, grid)}
        if superpixels is not None:
            out["superpixels"] = renumber(_nearest(superpixels, grid))
        return out


def _nearest(labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Integer labels [H,W] sampled at ``grid`` with nearest neighbour (exact in float64)."""
    moved = F.grid_sample(labels[None, None].double(), grid.double(), mode="nearest", padding_mode="border",
                          align_corners=False)
    return moved[0, 0].round().long()
