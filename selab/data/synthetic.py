"""A built-in procedural person-parts dataset: the default data that needs no download.

Stands in for PASCAL-Person-Part (Xia et al.; the benchmark of Liang et al., ECCV 2016 / CVPR 2017)
with the same seven classes and ids: 0 background, 1 head, 2 torso, 3 upper arm, 4 lower arm,
5 upper leg, 6 lower leg. Each image holds one to three jointed figures (an ellipse head and torso,
capsule limbs with random shoulder, elbow, hip and knee angles, scale and position) painted over a
textured background in painter's order, so people and limbs occlude each other.

The appearance is built so that parsing needs context, as on real photos: a figure's upper and lower
arm share one colour and texture (a sleeve), and so do its upper and lower leg (trousers), so only
the position along the limb tells "upper" from "lower"; background distractor shapes (capsules
included) reuse the figures' own colours and textures; lighting gradients, colour casts, blur and
noise vary per image. Everything is drawn with numpy on pixel grids (distance to a segment for
limbs, an ellipse equation for head and torso), with no Python loop over pixels.

selab decision: the whole generator (shapes, proportions, palette, ranges of pose and noise) is
selab's; it is not from the papers. An image depends only on ``(seed, index, image_size)``.

Examples
--------
>>> ds = SyntheticPersonParts(num_images=4, image_size=64, seed=0)
>>> sample = ds[0]
>>> sample["image"].shape, sample["mask"].shape, sample["id"]
(torch.Size([3, 64, 64]), torch.Size([64, 64]), '0000000')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from selab.classes import NUM_CLASSES

__all__ = ["GENERATOR_VERSION", "SyntheticSample", "render_sample", "SyntheticPersonParts", "write_pascal_layout"]

# Bump when the drawing changes, so that caches keyed by the dataset name go stale.
GENERATOR_VERSION = 1

HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG = 1, 2, 3, 4, 5, 6

# Clothing and distractor colours (RGB in [0, 1]); figures and background draw from the same list.
_PALETTE = np.array(
    [
        [0.80, 0.15, 0.15], [0.15, 0.35, 0.75], [0.20, 0.55, 0.25], [0.90, 0.75, 0.20],
        [0.55, 0.30, 0.65], [0.95, 0.55, 0.15], [0.15, 0.15, 0.18], [0.92, 0.92, 0.90],
        [0.50, 0.50, 0.52], [0.45, 0.28, 0.15], [0.20, 0.65, 0.70], [0.85, 0.45, 0.60],
        [0.30, 0.30, 0.55], [0.65, 0.70, 0.35],
    ],
    dtype=np.float32,
)
_SKIN = np.array(
    [[0.96, 0.80, 0.69], [0.87, 0.67, 0.53], [0.72, 0.52, 0.38], [0.55, 0.38, 0.26], [0.36, 0.24, 0.16]],
    dtype=np.float32,
)
_HAIR = np.array(
    [[0.08, 0.06, 0.05], [0.30, 0.18, 0.08], [0.60, 0.45, 0.20], [0.50, 0.50, 0.50], [0.55, 0.20, 0.08]],
    dtype=np.float32,
)


class SyntheticSample(NamedTuple):
    """One rendered image: ``image`` float32 (H, W, 3) in [0, 1], ``mask`` int64 (H, W) class ids,
    ``instance`` int64 (H, W): 0 background, k for the k-th figure (1-based), for tests and demos."""

    image: np.ndarray
    mask: np.ndarray
    instance: np.ndarray


@dataclass
class _Appearance:
    """A colour field over image coordinates: flat, stripes, checks or mottled, between two colours.

    Defined in image coordinates (not per shape), so two shapes that share an appearance object
    (an upper and a lower sleeve) show one continuous texture.
    """

    kind: str
    color: np.ndarray
    color2: np.ndarray
    freq: float  # radians per pixel
    angle: float
    phase: np.ndarray  # three phases

    @staticmethod
    def random(rng: np.random.Generator, scale: float, color: np.ndarray | None = None) -> "_Appearance":
        if color is None:
            color = _PALETTE[rng.integers(len(_PALETTE))]
        color = np.clip(color + rng.normal(0, 0.04, 3), 0, 1).astype(np.float32)
        if rng.random() < 0.5:  # a darker/lighter shade of the same colour
            color2 = np.clip(color * rng.uniform(0.45, 0.8) + rng.uniform(0, 0.15), 0, 1)
        else:
            color2 = _PALETTE[rng.integers(len(_PALETTE))]
        kind = rng.choice(["flat", "stripes", "checks", "mottled"], p=[0.3, 0.3, 0.15, 0.25])
        period = scale * rng.uniform(0.04, 0.12)  # relative to the figure (or image) size
        return _Appearance(str(kind), color.astype(np.float32), np.asarray(color2, dtype=np.float32),
                           freq=float(2 * np.pi / max(period, 2.0)), angle=float(rng.uniform(0, np.pi)),
                           phase=rng.uniform(0, 2 * np.pi, 3).astype(np.float32))

    def render(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Colours at pixel coordinates ``y, x`` (same shape S) -> float32 (*S, 3)."""
        if self.kind == "flat":
            return np.broadcast_to(self.color, (*y.shape, 3))
        else:
            c, s = np.cos(self.angle), np.sin(self.angle)
            u, v = self.freq * (c * x + s * y), self.freq * (-s * x + c * y)
            if self.kind == "stripes":
                t = (np.sin(u + self.phase[0]) > 0.2).astype(np.float32)
            elif self.kind == "checks":
                t = ((np.sin(u + self.phase[0]) * np.sin(v + self.phase[1])) > 0).astype(np.float32)
            else:  # mottled: a few incommensurate waves, a cheap smooth noise
                t = np.sin(0.7 * u + self.phase[0]) + np.sin(0.53 * v + self.phase[1])
                t = t + np.sin(0.41 * (u + v) + self.phase[2])
                t = np.clip(0.5 + t / 4, 0, 1)
        return self.color + t[..., None] * (self.color2 - self.color)


class _Canvas:
    """An image and its label maps, painted shape by shape (painter's order: later shapes win).

    Each shape is evaluated only inside its bounding box, so the cost follows the shape's area.
    """

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.mask = np.zeros((height, width), np.int64)
        self.instance = np.zeros((height, width), np.int64)

    def _window(self, lo_y: float, hi_y: float, lo_x: float, hi_x: float):
        y0, y1 = max(int(np.floor(lo_y)), 0), min(int(np.ceil(hi_y)) + 1, self.height)
        x0, x1 = max(int(np.floor(lo_x)), 0), min(int(np.ceil(hi_x)) + 1, self.width)
        if y0 >= y1 or x0 >= x1:
            return None
        # Broadcastable column and row of pixel centres: cheaper than a full mesh grid.
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        return (slice(y0, y1), slice(x0, x1)), yy, xx

    def _paint(self, window, inside, shade, appearance, label, instance):
        region, yy, xx = window
        if not inside.any():
            return
        shape = inside.shape
        ys, xs = np.broadcast_to(yy, shape)[inside], np.broadcast_to(xx, shape)[inside]
        colors = appearance.render(ys, xs) * np.broadcast_to(shade, shape)[inside, None]
        self.image[region][inside] = colors
        if label is not None:
            self.mask[region][inside] = label
            self.instance[region][inside] = instance

    def capsule(self, p0, p1, radius, appearance, label=None, instance=0, shading=0.3):
        """A thick segment p0-p1 (points as (y, x)) with round ends: pixels within ``radius``."""
        (ay, ax), (by, bx) = p0, p1
        pad = radius + 1
        window = self._window(min(ay, by) - pad, max(ay, by) + pad, min(ax, bx) - pad, max(ax, bx) + pad)
        if window is None:
            return
        _, yy, xx = window
        dy, dx = by - ay, bx - ax
        t = np.clip(((yy - ay) * dy + (xx - ax) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
        dist2 = (yy - ay - t * dy) ** 2 + (xx - ax - t * dx) ** 2
        inside = dist2 <= radius * radius
        shade = 1 - shading * dist2 / (radius * radius)  # a round limb: darker at its sides
        self._paint(window, inside, shade, appearance, label, instance)

    def ellipse(self, center, radii, angle, appearance, label=None, instance=0, shading=0.3, split=None):
        """An ellipse; ``split=(hair_appearance, level)`` paints its top part (local y < level) as hair."""
        cy, cx = center
        ry, rx = radii
        reach = max(ry, rx) + 1
        window = self._window(cy - reach, cy + reach, cx - reach, cx + reach)
        if window is None:
            return
        _, yy, xx = window
        c, s = np.cos(angle), np.sin(angle)
        v = (c * (yy - cy) - s * (xx - cx)) / ry  # along the (tilted) vertical axis
        u = (s * (yy - cy) + c * (xx - cx)) / rx
        r2 = u * u + v * v
        inside = r2 <= 1
        shade = 1 - shading * r2
        if split is None:
            self._paint(window, inside, shade, appearance, label, instance)
        else:
            hair, level = split
            self._paint(window, inside & (v >= level), shade, appearance, label, instance)
            self._paint(window, inside & (v < level), shade, hair, label, instance)

    def rectangle(self, center, half_sizes, angle, appearance):
        cy, cx = center
        hy, hx = half_sizes
        reach = np.hypot(hy, hx) + 1
        window = self._window(cy - reach, cy + reach, cx - reach, cx + reach)
        if window is None:
            return
        _, yy, xx = window
        c, s = np.cos(angle), np.sin(angle)
        v = c * (yy - cy) - s * (xx - cx)
        u = s * (yy - cy) + c * (xx - cx)
        inside = (np.abs(v) <= hy) & (np.abs(u) <= hx)
        self._paint(window, inside, np.ones_like(v), appearance, None, 0)


def _direction(angle: float) -> np.ndarray:
    """Unit vector (dy, dx) for an angle measured from straight down, positive towards +x."""
    return np.array([np.cos(angle), np.sin(angle)])


@dataclass
class _Figure:
    """One person: joints in pixels and the four appearances it wears."""

    head_center: np.ndarray
    head_radii: tuple[float, float]
    torso_center: np.ndarray
    torso_radii: tuple[float, float]
    tilt: float
    arms: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]  # shoulder, elbow, wrist, behind torso
    legs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # hip, knee, ankle
    arm_radius: float
    leg_radius: float
    skin: _Appearance
    hair: _Appearance | None
    shirt: _Appearance
    sleeve: _Appearance
    trousers: _Appearance


def _random_figure(rng: np.random.Generator, height: int, width: int, size: float) -> _Figure:
    """A figure of body length ``size`` pixels (head top to feet) with a random pose and clothes."""
    L = size
    tilt = float(rng.normal(0, np.deg2rad(8)))
    down, right = _direction(tilt), _direction(tilt + np.pi / 2)  # right is +x at tilt 0
    center = np.array([rng.uniform(0.3, 0.7) * height, rng.uniform(0.1, 0.9) * width])
    torso_center = center - 0.08 * L * down
    torso_len, torso_wid = L * rng.uniform(0.14, 0.17), L * rng.uniform(0.075, 0.1)
    head_radii = (L * rng.uniform(0.065, 0.08), L * rng.uniform(0.05, 0.065))
    head_center = torso_center - (torso_len + head_radii[0] * 0.9) * down

    arm_radius = L * rng.uniform(0.024, 0.034)
    leg_radius = L * rng.uniform(0.035, 0.05)
    upper_arm, lower_arm = L * rng.uniform(0.13, 0.16), L * rng.uniform(0.12, 0.15)
    upper_leg, lower_leg = L * rng.uniform(0.2, 0.24), L * rng.uniform(0.19, 0.23)

    arms, legs = [], []
    for side in (-1.0, 1.0):
        shoulder = torso_center - 0.8 * torso_len * down + side * (torso_wid * 0.95) * right
        a_upper = tilt + side * rng.uniform(np.deg2rad(-25), np.deg2rad(165))
        bend = rng.uniform(0, np.deg2rad(140)) * rng.choice([-1.0, 1.0], p=[0.3, 0.7])
        a_lower = a_upper - side * bend  # mostly bending in, towards the body
        elbow = shoulder + upper_arm * _direction(a_upper)
        wrist = elbow + lower_arm * _direction(a_lower)
        arms.append((shoulder, elbow, wrist, bool(rng.random() < 0.3)))

        hip = torso_center + 0.8 * torso_len * down + side * (torso_wid * 0.5) * right
        a_upper = tilt + side * rng.uniform(np.deg2rad(-15), np.deg2rad(55))
        bend = rng.uniform(0, np.deg2rad(100)) * rng.choice([-1.0, 1.0])
        knee = hip + upper_leg * _direction(a_upper)
        ankle = knee + lower_leg * _direction(a_upper + bend)
        legs.append((hip, knee, ankle))

    scale = L  # textures scale with the figure
    shirt = _Appearance.random(rng, scale)
    # selab decision: sometimes the sleeve is the shirt (long sleeves), so arm vs torso needs shape too.
    sleeve = shirt if rng.random() < 0.25 else _Appearance.random(rng, scale)
    trousers = _Appearance.random(rng, scale)
    skin = _Appearance.random(rng, scale, color=_SKIN[rng.integers(len(_SKIN))])
    skin.kind = "flat"
    hair = None
    if rng.random() < 0.8:
        hair = _Appearance.random(rng, scale, color=_HAIR[rng.integers(len(_HAIR))])
        hair.kind = "flat"
    return _Figure(
        head_center, head_radii, torso_center, (torso_len, torso_wid), tilt, arms, legs,
        arm_radius, leg_radius, skin, hair, shirt, sleeve, trousers,
    )


def _draw_figure(canvas: _Canvas, fig: _Figure, instance: int, rng: np.random.Generator) -> None:
    def arm(shoulder, elbow, wrist):
        canvas.capsule(shoulder, elbow, fig.arm_radius, fig.sleeve, UPPER_ARM, instance)
        canvas.capsule(elbow, wrist, fig.arm_radius * 0.92, fig.sleeve, LOWER_ARM, instance)

    for shoulder, elbow, wrist, behind in fig.arms:
        if behind:
            arm(shoulder, elbow, wrist)
    for hip, knee, ankle in fig.legs:
        canvas.capsule(hip, knee, fig.leg_radius, fig.trousers, UPPER_LEG, instance)
        canvas.capsule(knee, ankle, fig.leg_radius * 0.88, fig.trousers, LOWER_LEG, instance)
    canvas.ellipse(fig.torso_center, fig.torso_radii, fig.tilt, fig.shirt, TORSO, instance)
    for shoulder, elbow, wrist, behind in fig.arms:
        if not behind:
            arm(shoulder, elbow, wrist)
    split = None if fig.hair is None else (fig.hair, rng.uniform(-0.5, 0.0))
    canvas.ellipse(fig.head_center, fig.head_radii, fig.tilt, fig.skin, HEAD, instance, split=split)


def _draw_background(canvas: _Canvas, rng: np.random.Generator, figures: Sequence[_Figure]) -> None:
    H, W = canvas.height, canvas.width
    size = float(min(H, W))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = _Appearance.random(rng, size * 3)
    other = _Appearance.random(rng, size * 3)
    # A soft blend of two textured fields, so the background is neither flat nor one texture;
    # a sum of a row wave and a column wave costs one add per pixel.
    fy, fx = 2 * np.pi / (size * rng.uniform(0.3, 0.8, 2))
    py, px = rng.uniform(0, 2 * np.pi, 2)
    wave_y = np.sin(fy * np.arange(H, dtype=np.float32) + py)[:, None]
    wave_x = np.sin(fx * np.arange(W, dtype=np.float32) + px)[None, :]
    blend = (0.5 + 0.25 * (wave_y + wave_x))[..., None]
    first = base.render(yy, xx)
    canvas.image[:] = first + blend * (other.render(yy, xx) - first)

    # Distractors: many reuse a figure's own clothes, so colour or texture alone never means "person".
    worn = [a for f in figures for a in (f.sleeve, f.trousers, f.shirt, f.skin)]
    for _ in range(int(rng.integers(3, 9))):
        if worn and rng.random() < 0.5:
            look = worn[int(rng.integers(len(worn)))]
        else:
            look = _Appearance.random(rng, size)
        center = (rng.uniform(0, H), rng.uniform(0, W))
        extent = size * rng.uniform(0.04, 0.18)
        kind = rng.integers(3)
        if kind == 0:
            canvas.ellipse(center, (extent, extent * rng.uniform(0.4, 1.0)), rng.uniform(0, np.pi), look)
        elif kind == 1:  # limb-like
            d = _direction(rng.uniform(0, 2 * np.pi)) * extent * 2
            canvas.capsule(center, (center[0] + d[0], center[1] + d[1]), size * rng.uniform(0.015, 0.04), look)
        else:
            canvas.rectangle(center, (extent, extent * rng.uniform(0.3, 1.0)), rng.uniform(0, np.pi), look)


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting gradient, colour cast, blur and noise: the nuisances a real camera adds."""
    H, W, _ = image.shape
    ys = np.linspace(-0.5, 0.5, H, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, W, dtype=np.float32)[None, :]
    gy, gx = rng.uniform(-0.6, 0.6, 2)
    light = rng.uniform(0.65, 1.15) * (1 + gy * ys + gx * xs)
    cast = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    image = image * light[..., None] * cast
    sigma = rng.uniform(0.0, 1.2) * min(H, W) / 128
    if sigma > 0.3:
        image = gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    noise = rng.uniform(0.0, 0.06)
    image = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size: expected an int or (height, width), each >= 8; got {image_size!r}")
    return size  # type: ignore[return-value]


def render_sample(seed: int, index: int, image_size: int | Sequence[int] = 128) -> SyntheticSample:
    """Render image ``index`` of the synthetic dataset with ``seed``.

    Parameters
    ----------
    seed, index : int
        The image depends only on these and on ``image_size``.
    image_size : int or (height, width)

    Returns
    -------
    SyntheticSample
        ``image`` float32 (H, W, 3) in [0, 1], ``mask`` int64 (H, W), ``instance`` int64 (H, W).

    Examples
    --------
    >>> s = render_sample(0, 3, (48, 64))
    >>> s.image.shape, int(s.mask.max()) <= 6
    ((48, 64, 3), True)
    """
    H, W = _image_size(image_size)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0; got seed={seed}, index={index}")
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    canvas = _Canvas(H, W)
    count = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    short = min(H, W)
    figures = [
        _random_figure(rng, H, W, short * rng.uniform(0.65, 1.05) / count**0.35) for _ in range(count)
    ]
    _draw_background(canvas, rng, figures)
    for k, fig in enumerate(figures, start=1):
        _draw_figure(canvas, fig, k, rng)
    image = _photometric(canvas.image, rng)
    return SyntheticSample(image, canvas.mask, canvas.instance)


class SyntheticPersonParts(torch.utils.data.Dataset):
    """Procedural person-parts images with PASCAL-Person-Part's classes, generated on the fly.

    Parameters
    ----------
    num_images : int
        Length of the dataset.
    image_size : int or (height, width)
        Render size; any size works (the figures scale with it).
    seed : int
        Image ``i`` is ``render_sample(seed, start + i, image_size)``: deterministic, and different seeds
        give different datasets.
    start : int
        Index of the first image; selab decision: ``make_dataset`` takes the validation split from
        ``start=1_000_000`` so it never overlaps the training images.
    transform : callable, optional
        Applied to the sample dict (see :mod:`selab.data.datasets`).

    Items are dicts ``image`` float32 [3, H, W] in [0, 1], ``mask`` int64 [H, W], ``id`` str
    (the 7-digit image index), the sample format of every selab dataset.

    Examples
    --------
    >>> ds = SyntheticPersonParts(8, 96, seed=1)
    >>> len(ds), ds[7]["mask"].dtype
    (8, torch.int64)
    """

    num_classes = NUM_CLASSES

    def __init__(self, num_images: int, image_size: int | Sequence[int] = 128, seed: int = 0, start: int = 0,
                 transform: Callable[[dict], dict] | None = None):
        if not isinstance(num_images, (int, np.integer)) or num_images < 0:
            raise ValueError(f"num_images: expected an int >= 0, got {num_images!r}")
        if start < 0 or seed < 0:
            raise ValueError(f"seed and start must be >= 0; got seed={seed}, start={start}")
        self.num_images, self.image_size, self.transform = int(num_images), _image_size(image_size), transform
        self.seed, self.start = int(seed), int(start)
        # Used as the cache key prefix for superpixels: changes whenever the pixels could.
        self.name = f"synthetic-v{GENERATOR_VERSION}-s{self.seed}"
        self.ids = [f"{self.start + i:07d}" for i in range(self.num_images)]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> dict:
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} images")
        i = i % self.num_images
        s = render_sample(self.seed, self.start + i, self.image_size)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))),
                  "mask": torch.from_numpy(s.mask), "id": self.ids[i]}
        return self.transform(sample) if self.transform is not None else sample


def write_pascal_layout(dataset: torch.utils.data.Dataset, root: str | os.PathLike, val_fraction: float = 0.1,
                        quality: int = 95) -> Path:
    """Write a dataset's samples to disk in the PASCAL-Person-Part layout.

    Writes ``JPEGImages/<id>.jpg``, ``SegmentationPart/<id>.png`` (8-bit, one class id per pixel),
    ``train_id.txt`` and ``val_id.txt`` (the last ``val_fraction`` of the samples), so that
    :class:`selab.data.datasets.PascalPersonParts` reads it like the real benchmark.

    Parameters
    ----------
    dataset : Dataset of sample dicts
        Any selab dataset (``image`` [3, H, W] in [0, 1], ``mask`` [H, W], ``id``).
    root : path
        Created if missing.
    val_fraction : float
        Share of samples listed in ``val_id.txt``, in [0, 1].
    quality : int
        JPEG quality (the masks are lossless PNG).

    Returns
    -------
    Path
        ``root``.

    Examples
    --------
    >>> import tempfile
    >>> root = write_pascal_layout(SyntheticPersonParts(3, 32), tempfile.mkdtemp())
    >>> sorted(p.name for p in root.iterdir())
    ['JPEGImages', 'SegmentationPart', 'train_id.txt', 'val_id.txt']
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction: expected a value in [0, 1], got {val_fraction}")
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationPart").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(len(dataset)):
        sample = dataset[i]
        image, mask = (torch.as_tensor(sample[key]).cpu().numpy() for key in ("image", "mask"))
        rgb = (np.clip(image.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
        sample_id = str(sample["id"])
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{sample_id}.jpg", quality=quality)
        Image.fromarray(mask.astype(np.uint8)).save(root / "SegmentationPart" / f"{sample_id}.png")
        ids.append(sample_id)
    num_val = int(round(len(ids) * val_fraction))
    split = len(ids) - num_val
    (root / "train_id.txt").write_text("".join(f"{i}\n" for i in ids[:split]))
    (root / "val_id.txt").write_text("".join(f"{i}\n" for i in ids[split:]))
    return root
