"""The embedded default data set: seeded, generated multi-scale segmentation images.

Nothing is downloaded. Image ``i`` of a :class:`SyntheticSegmentation` is a pure function of
``(seed, i, constructor parameters)``: each index draws from its own ``numpy`` generators, so any
subset, any order and any number of DataLoader workers give identical tensors.

What an image holds:

- class 0, background: a textured field (a colour of random hue and moderate saturation, plus a
  coarse and a medium-frequency noise layer). Its colours overlap the objects', so a pixel's colour
  alone does not say background; its texture, seen over a few pixels, does;
- ``objects_per_image`` objects of classes ``1..num_classes-1``. The class fixes the shape
  (disc, rectangle, triangle, ring, cross, cycling) and a mean hue (evenly spaced around the colour
  wheel); every object gets a random rotation, a hue with Gaussian noise (sigma = 0.4 of the hue
  spacing: about a fifth of objects look like a neighbouring class by colour), random
  saturation/brightness and a shading gradient, and the whole image gets pixel noise. Telling such
  objects apart takes their shape, i.e. context at the object's own scale; for the smallest
  objects colour is nearly all there is.

Object size (``size_px``) is the diameter of the circle that circumscribes the shape, before
clipping at the image border. Sizes are drawn in log space between ``object_px = (lo, hi)``:
``size = lo * (hi / lo) ** t`` with ``t`` in [0, 1]. ``scale_mix`` chooses the law of ``t``:

- ``'uniform'`` (bias 0): ``t ~ U(0, 1)``, i.e. log-uniform sizes, as many objects per octave;
- ``'small'`` (bias -1) / ``'large'`` (bias +1): ``t = u ** (4 ** -bias)`` with ``u ~ U(0, 1)``,
  so the mean of ``t`` is 0.2 for 'small' and 0.8 for 'large';
- a float ``bias`` in [-1, 1] interpolates between those.

Each image first draws its own scale anchor ``t_img`` from that law; its objects take
``t = t_img + scale_spread * N(0, 1)``, reflected into [0, 1]. So images differ in typical object
size (what routing should react to) while each still holds a spread of sizes. Objects are painted
largest first, so smaller ones stay visible on top. The drawn sizes are recorded per image:
:meth:`SyntheticSegmentation.objects`, :meth:`~SyntheticSegmentation.object_scales`,
:meth:`~SyntheticSegmentation.mean_object_px`.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from routespace.spaces.errors import RoutespaceError

SHAPES = ("disc", "rectangle", "triangle", "ring", "cross")
SCALE_MIXES = {"uniform": 0.0, "small": -1.0, "large": 1.0}

# Per-channel statistics of the raw [0, 1] RGB images (measured over 1000 default training images); the
# returned images are (raw - mean) / std, so roughly mean 0 and std 1 per channel.
_RAW_MEAN = np.array([0.475, 0.453, 0.451], dtype=np.float32)
_RAW_STD = np.array([0.214, 0.208, 0.212], dtype=np.float32)

# Default splits of the embedded data set: (number of images, seed).
_DEFAULT_SPLITS = {"train": (2000, 0), "val": (200, 1)}


@dataclass(frozen=True)
class SyntheticObject:
    """One object as drawn: its class, shape, size (circumscribed diameter, px) and centre (px)."""

    cls: int
    shape: str
    size_px: float
    center_yx: tuple[float, float]


@dataclass(frozen=True)
class _Layout:
    """Everything drawn for one object (the rendering parameters of :class:`SyntheticObject`)."""

    obj: SyntheticObject
    angle: float
    shape_param: float  # rectangle: half-angle of the diagonal; ring: inner/outer radius ratio
    rgb: tuple[float, float, float]
    shading: tuple[float, float]  # gradient along the object's rotated (u, v) axes


def scale_bias(scale_mix: str | float) -> float:
    """The bias in [-1, 1] that a ``scale_mix`` name or number stands for."""
    if isinstance(scale_mix, str):
        if scale_mix not in SCALE_MIXES:
            raise RoutespaceError(
                f"unknown scale_mix {scale_mix!r}: use one of {', '.join(SCALE_MIXES)} or a number in [-1, 1]"
            )
        return SCALE_MIXES[scale_mix]
    bias = float(scale_mix)
    if not -1.0 <= bias <= 1.0:
        raise RoutespaceError(f"scale_mix bias {bias} is outside [-1, 1]: -1 favours small objects, +1 large")
    return bias


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or any(int(v) != v or v < 1 for v in value):
        raise RoutespaceError(f"{name} must be a positive int or (height, width), got {value!r}")
    return int(value[0]), int(value[1])


@lru_cache(maxsize=16)
def _bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.linspace(0.0, n_in - 1.0, n_out, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), n_in - 2)
    return i0, i0 + 1, (pos - i0)


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a small [h, w, 3] grid to [height, width, 3] (corners aligned)."""
    y0, y1, wy = _bilinear_weights(grid.shape[0], height)
    x0, x1, wx = _bilinear_weights(grid.shape[1], width)
    rows = grid[y0] * (1.0 - wy)[:, None, None] + grid[y1] * wy[:, None, None]
    return rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def _shape_mask(layout: _Layout, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Boolean mask of the object on a grid of offsets from its centre."""
    r = layout.obj.size_px / 2.0
    shape = layout.obj.shape
    if shape in ("disc", "ring"):
        d2 = dy * dy + dx * dx
        if shape == "disc":
            return d2 <= r * r
        r_in = min(layout.shape_param * r, r - 1.0)  # keep the ring at least 1 px thick
        return (d2 <= r * r) & (d2 >= r_in * r_in)
    c, s = math.cos(layout.angle), math.sin(layout.angle)
    u = dx * c + dy * s
    v = dy * c - dx * s
    if shape == "rectangle":
        phi = layout.shape_param
        return (np.abs(u) <= r * math.cos(phi)) & (np.abs(v) <= r * math.sin(phi))
    if shape == "triangle":  # equilateral, circumradius r, so inradius r / 2
        mask = u <= r / 2.0
        for k in (1, 2):
            a = 2.0 * math.pi * k / 3.0
            mask &= u * math.cos(a) + v * math.sin(a) <= r / 2.0
        return mask
    # cross: two bars of half-length L and half-width w with L^2 + w^2 = r^2
    w = 0.3 * r
    length = math.sqrt(r * r - w * w)
    au, av = np.abs(u), np.abs(v)
    return ((au <= length) & (av <= w)) | ((au <= w) & (av <= length))


class SyntheticSegmentation(Dataset):
    """Seeded multi-scale segmentation images; see the module docstring for what they hold.

    Items are ``(image, label)``: ``float32 [3, H, W]`` (about mean 0, std 1) and ``int64 [H, W]``
    with values in ``[0, num_classes)``. ``size`` is ``(height, width)``.
    """

    ignore_index = 255

    def __init__(
        self,
        num_images: int,
        size: int | tuple[int, int] = (64, 64),
        num_classes: int = 5,
        object_px: tuple[float, float] = (4, 60),
        scale_mix: str | float = "uniform",
        seed: int = 0,
        objects_per_image: tuple[int, int] = (2, 6),
        scale_spread: float = 0.15,
    ) -> None:
        if int(num_images) != num_images or num_images < 0:
            raise RoutespaceError(f"num_images must be a non-negative int, got {num_images!r}")
        if int(num_classes) != num_classes or num_classes < 2:
            raise RoutespaceError(f"num_classes must be an int >= 2 (background + objects), got {num_classes!r}")
        if int(seed) != seed or seed < 0:
            raise RoutespaceError(f"seed must be a non-negative int, got {seed!r}")
        self.size = _pair(size, "size")
        lo, hi = (float(v) for v in object_px)
        if not 1.0 <= lo <= hi:
            raise RoutespaceError(f"object_px must be (min, max) with 1 <= min <= max, got {object_px!r}")
        if lo > min(self.size):
            raise RoutespaceError(f"object_px min {lo:g} is larger than the image {self.size}: lower it")
        n_lo, n_hi = (int(v) for v in objects_per_image)
        if not 1 <= n_lo <= n_hi:
            raise RoutespaceError(f"objects_per_image must be (min, max) with 1 <= min <= max, got {objects_per_image!r}")
        if not 0.0 <= scale_spread <= 1.0:
            raise RoutespaceError(f"scale_spread must be in [0, 1], got {scale_spread!r}")
        self.num_images = int(num_images)
        self.num_classes = int(num_classes)
        self.object_px = (lo, hi)
        self.scale_mix = scale_mix
        self.bias = scale_bias(scale_mix)
        self.seed = int(seed)
        self.objects_per_image = (n_lo, n_hi)
        self.scale_spread = float(scale_spread)

    @property
    def class_names(self) -> tuple[str, ...]:
        """``background`` then the shape of each object class (``disc``, ..., ``disc-2`` when shapes repeat)."""
        names = ["background"]
        for c in range(1, self.num_classes):
            shape, rnd = SHAPES[(c - 1) % len(SHAPES)], (c - 1) // len(SHAPES)
            names.append(shape if rnd == 0 else f"{shape}-{rnd + 1}")
        return tuple(names)

    def describe(self) -> dict:
        """The parameters that define the data set (JSON-ready), for reports."""
        return {
            "kind": "synthetic",
            "num_images": self.num_images,
            "size": list(self.size),
            "num_classes": self.num_classes,
            "object_px": list(self.object_px),
            "scale_mix": self.scale_mix,
            "seed": self.seed,
            "objects_per_image": list(self.objects_per_image),
            "scale_spread": self.scale_spread,
        }

    def __len__(self) -> int:
        return self.num_images

    def set_epoch(self, epoch: int) -> None:
        """No-op (the images never change); here so every data set can be told the epoch."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"SyntheticSegmentation({args})"

    def _check_index(self, i: int) -> int:
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"image {i} out of range for {self.num_images} images")
        return i % self.num_images

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        # Layout (stream 0) and pixels (stream 1) draw independently, so the recorded object sizes
        # can be read without rendering.
        return np.random.default_rng([self.seed, i, stream])

    def _scale_t(self, rng: np.random.Generator) -> float:
        return float(rng.random() ** (4.0 ** -self.bias))

    def _layout(self, i: int) -> list[_Layout]:
        rng = self._rng(i, 0)
        height, width = self.size
        lo, hi = self.object_px
        n_obj = int(rng.integers(self.objects_per_image[0], self.objects_per_image[1] + 1))
        t_img = self._scale_t(rng)
        hue_step = 1.0 / (self.num_classes - 1)
        # Hue noise wide enough that about a fifth of objects look like a neighbouring class by
        # colour alone: shape (and so context at the object's scale) settles it.
        hue_sigma = 0.4 * hue_step
        out = []
        for _ in range(n_obj):
            t = t_img + self.scale_spread * float(rng.standard_normal())
            t = abs(t) % 2.0
            t = 2.0 - t if t > 1.0 else t  # reflect into [0, 1]
            size = lo * (hi / lo) ** t
            r = size / 2.0
            cls = int(rng.integers(1, self.num_classes))
            shape = SHAPES[(cls - 1) % len(SHAPES)]
            # Keep the centre far enough inside that most of the object shows, when it fits.
            cy = rng.uniform(min(r, height / 2.0), max(height - r, height / 2.0))
            cx = rng.uniform(min(r, width / 2.0), max(width - r, width / 2.0))
            angle = rng.uniform(0.0, 2.0 * math.pi)
            shape_param = rng.uniform(math.pi / 6.0, math.pi / 4.0) if shape == "rectangle" else rng.uniform(0.45, 0.65)
            hue = ((cls - 1) * hue_step + hue_sigma * float(rng.standard_normal())) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))
            shading = (rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2))
            obj = SyntheticObject(cls, shape, float(size), (float(cy) - 0.5, float(cx) - 0.5))
            out.append(_Layout(obj, float(angle), float(shape_param), tuple(map(float, rgb)), shading))
        out.sort(key=lambda lay: -lay.obj.size_px)  # paint large first so small objects stay visible
        return out

    def objects(self, i: int) -> list[SyntheticObject]:
        """The objects of image ``i`` in painting order (largest first), without rendering it."""
        return [lay.obj for lay in self._layout(self._check_index(i))]

    def object_scales(self, i: int) -> list[float]:
        """Object sizes of image ``i`` in px (circumscribed diameter, before clipping or occlusion)."""
        return [obj.size_px for obj in self.objects(i)]

    def mean_object_px(self, i: int) -> float:
        """Mean object size of image ``i`` in px."""
        scales = self.object_scales(i)
        return float(sum(scales) / len(scales))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        height, width = self.size
        base = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.8)), np.float32)
        coarse = rng.random((5, 5, 3), dtype=np.float32) - 0.5
        medium = rng.random((max(2, height // 4), max(2, width // 4), 3), dtype=np.float32) - 0.5
        return base + 0.35 * _upsample(coarse, height, width) + 0.25 * _upsample(medium, height, width)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._check_index(i)
        height, width = self.size
        rng = self._rng(i, 1)
        img = self._background(rng)
        label = np.zeros((height, width), dtype=np.int64)
        for lay in self._layout(i):
            cy, cx = lay.obj.center_yx
            r = lay.obj.size_px / 2.0
            y0, y1 = max(0, int(cy - r)), min(height, int(math.ceil(cy + r)) + 1)
            x0, x1 = max(0, int(cx - r)), min(width, int(math.ceil(cx + r)) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
            dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
            mask = _shape_mask(lay, dy, dx)
            shade = 1.0 + (lay.shading[0] * dx + lay.shading[1] * dy) / max(r, 1.0)
            fill = np.asarray(lay.rgb, np.float32) * shade[..., None]
            img[y0:y1, x0:x1][mask] = fill[mask]
            label[y0:y1, x0:x1][mask] = lay.obj.cls
        img += rng.normal(0.0, 0.05, size=img.shape).astype(np.float32)
        img = (img - _RAW_MEAN) / _RAW_STD
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)), torch.from_numpy(label)


def embedded_default(
    split: str,
    size: int | tuple[int, int] = (64, 64),
    num_images: int | None = None,
    scale_mix: str | float = "uniform",
) -> SyntheticSegmentation:
    """The embedded default data set: ``train`` (2000 images, seed 0) or ``val`` (200 images, seed 1).

    Objects span 4..60 px at 64x64; at other sizes the range scales with the shorter image side
    (minimum 2 px), so the set looks the same at any resolution. ``num_images`` overrides the
    split's image count (the first ``num_images`` of the same sequence).
    """
    if split not in _DEFAULT_SPLITS:
        raise RoutespaceError(f"unknown split {split!r} for the synthetic data set: use one of {', '.join(_DEFAULT_SPLITS)}")
    default_n, seed = _DEFAULT_SPLITS[split]
    size = _pair(size, "size")
    factor = min(size) / 64.0
    object_px = (max(2.0, 4.0 * factor), max(2.0, 60.0 * factor))
    n = default_n if num_images is None else num_images
    return SyntheticSegmentation(n, size=size, object_px=object_px, scale_mix=scale_mix, seed=seed)
