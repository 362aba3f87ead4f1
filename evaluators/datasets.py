"""Real segmentation data in its standard folder layouts (nothing is downloaded), and ``load_dataset``.

Items are ``(image, label)``: ``float32 [3, H, W]`` normalised with the ImageNet mean/std and
``int64 [H, W]`` with values in ``[0, num_classes)`` or ``255`` (ignore). Label files are checked
as they are read: a value that is neither a class nor 255 raises :class:`RoutespaceError`.

Sizes, given as ``(height, width)``, must be divisible by 32 (the coarsest stride). ``mode`` says
how an image is brought to ``size``:

- ``'random_crop'`` (default for the ``train`` split): a random crop (zero-padded image, label
  255, where the image is smaller) and a random horizontal flip. The draw for image ``i`` comes
  from ``(seed, epoch, i)``; call :meth:`set_epoch` each epoch for fresh crops.
- ``'resize'`` (default for other splits): bilinear image, nearest-neighbour label.
- ``'center_crop'``: a deterministic central crop (padded like ``random_crop``).

Without ``size`` images keep their own size (VOC images then differ in size: batch size 1).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from routespace.evaluators.data_registry import data_set_kind, forms_of
from routespace.evaluators.synthetic import SCALE_MIXES, embedded_default
from routespace.spaces.errors import RoutespaceError

IGNORE_INDEX = 255
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MODES = ("random_crop", "center_crop", "resize")

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
# The official cityscapesScripts table: label id -> train id for the 19 evaluated classes; the other
# ids (0..33) map to the ignore index.
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_MAX_LABEL_ID = 33

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

_CITYSCAPES_LAYOUT = (
    "expected ROOT/leftImg8bit/{split}/{city}/*_leftImg8bit.png and "
    "ROOT/gtFine/{split}/{city}/*_gtFine_labelIds.png (or *_gtFine_labelTrainIds.png)"
)
_VOC_LAYOUT = (
    "expected ROOT/JPEGImages/*.jpg, ROOT/SegmentationClass/*.png and "
    "ROOT/ImageSets/Segmentation/{split}.txt (ROOT = VOCdevkit/VOC2012)"
)


@lru_cache(maxsize=1)
def _cityscapes_lut() -> np.ndarray:
    lut = np.full(CITYSCAPES_MAX_LABEL_ID + 1, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC palette: ``[n, 3]`` uint8, colour of class index ``i`` in row ``i``."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise RoutespaceError(f"size {size!r} must be (height, width) divisible by 32, e.g. (512, 1024)")
    return int(h), int(w)


def _check_labels(label: np.ndarray, num_classes: int, path: Path) -> None:
    bad = ((label < 0) | (label >= num_classes)) & (label != IGNORE_INDEX)
    if bad.any():
        value = int(label[bad][0])
        raise RoutespaceError(
            f"label file {path} has value {value}: labels must be in [0, {num_classes}) or {IGNORE_INDEX} (ignore)"
        )


def _pad_to(img: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ph, pw = max(0, size[0] - label.shape[0]), max(0, size[1] - label.shape[1])
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return img, label


def fit_to_size(
    img: np.ndarray, label: np.ndarray, size: tuple[int, int], mode: str, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a uint8 ``[H, W, 3]`` image and its ``[H, W]`` label to ``size`` (see the module docstring)."""
    h, w = size
    if mode == "resize":
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
        return img, label
    img, label = _pad_to(img, label, size)
    if mode == "center_crop":
        top, left = (label.shape[0] - h) // 2, (label.shape[1] - w) // 2
    else:
        top = int(rng.integers(0, label.shape[0] - h + 1))
        left = int(rng.integers(0, label.shape[1] - w + 1))
    img, label = img[top:top + h, left:left + w], label[top:top + h, left:left + w]
    if mode == "random_crop" and rng.random() < 0.5:
        img, label = img[:, ::-1], label[:, ::-1]
    return img, label


class FolderSegmentation(Dataset):
    """Base for image/label pairs on disk: subclasses find the pairs and decode their label files."""

    ignore_index = IGNORE_INDEX
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | Path,
        split: str,
        size: int | tuple[int, int] | None = None,
        mode: str | None = None,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.size = _size_pair(size)
        self.mode = mode or ("random_crop" if split == "train" else "resize")
        if self.mode not in MODES:
            raise RoutespaceError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        self.seed = int(seed)
        self.epoch = 0
        self.root, self.pairs = self._find_pairs(Path(root).expanduser(), split)

    def _find_pairs(self, root: Path, split: str) -> tuple[Path, list[tuple[Path, Path]]]:
        """The data set's root folder and its (image, label) file pairs; checks the layout."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh random crops for ``epoch`` (only ``random_crop`` uses it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def read_label(self, path: Path) -> np.ndarray:
        """The label file as ``uint8 [H, W]`` class indices (255 = ignore), checked."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, label_path = self.pairs[i]
        with Image.open(img_path) as im:
            img = np.asarray(im.convert("RGB"))
        label = self.read_label(label_path)
        if img.shape[:2] != label.shape:
            raise RoutespaceError(
                f"image {img_path} is {img.shape[1]}x{img.shape[0]} but its label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]}: they must match"
            )
        if self.size is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i % len(self)]) if self.mode == "random_crop" else None
            img, label = fit_to_size(img, label, self.size, self.mode, rng)
        x = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return (
            torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
        )


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise RoutespaceError(f"missing folder {path}: {layout}")


def _subdirs(path: Path) -> str:
    return ", ".join(sorted(p.name for p in path.iterdir() if p.is_dir())) or "none"


class CityscapesSegmentation(FolderSegmentation):
    """Cityscapes fine annotations mapped to the 19 train ids (other ids -> 255).

    Reads ``leftImg8bit/{split}/{city}/*_leftImg8bit.png``; for each image the label is
    ``gtFine/{split}/{city}/*_gtFine_labelTrainIds.png`` when present, else ``*_gtFine_labelIds.png``
    mapped with the official id -> train id table.
    """

    class_names = CITYSCAPES_CLASSES

    def _find_pairs(self, root: Path, split: str) -> tuple[Path, list[tuple[Path, Path]]]:
        _require_dir(root, _CITYSCAPES_LAYOUT)
        _require_dir(root / "leftImg8bit", _CITYSCAPES_LAYOUT)
        _require_dir(root / "gtFine", _CITYSCAPES_LAYOUT)
        img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        if not img_dir.is_dir():
            raise RoutespaceError(
                f"missing folder {img_dir}: splits found in {root / 'leftImg8bit'}: {_subdirs(root / 'leftImg8bit')}"
            )
        _require_dir(gt_dir, _CITYSCAPES_LAYOUT)
        pairs = []
        for img_path in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img_path.name[: -len("_leftImg8bit.png")]
            candidates = [gt_dir / img_path.parent.name / f"{stem}_gtFine_{kind}.png" for kind in ("labelTrainIds", "labelIds")]
            label_path = next((p for p in candidates if p.is_file()), None)
            if label_path is None:
                raise RoutespaceError(f"no label for {img_path}: expected {candidates[1]} (or {candidates[0].name})")
            pairs.append((img_path, label_path))
        if not pairs:
            raise RoutespaceError(f"no images in {img_dir}: {_CITYSCAPES_LAYOUT}")
        return root, pairs

    def read_label(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            label = np.asarray(im)
        if label.ndim != 2:
            raise RoutespaceError(f"label file {path} has {label.shape[2]} channels: Cityscapes labels are single-channel PNGs")
        if path.name.endswith("_labelTrainIds.png"):
            _check_labels(label, self.num_classes, path)
            return label.astype(np.uint8)
        bad = (label < 0) | (label > CITYSCAPES_MAX_LABEL_ID)
        if bad.any():
            raise RoutespaceError(
                f"label file {path} has value {int(label[bad][0])}: Cityscapes label ids are 0..{CITYSCAPES_MAX_LABEL_ID}"
            )
        return _cityscapes_lut()[label]


class VOCSegmentation(FolderSegmentation):
    """Pascal VOC segmentation: 21 classes (0 = background), 255 = ignore (object borders).

    ``root`` is ``VOCdevkit/VOC2012`` (a folder holding ``VOCdevkit/VOC2012`` or ``VOC2012`` is
    accepted too). Labels are palette PNGs (index = class); RGB-coloured labels are decoded with the
    VOC colour map.
    """

    class_names = VOC_CLASSES

    def _find_pairs(self, root: Path, split: str) -> tuple[Path, list[tuple[Path, Path]]]:
        _require_dir(root, _VOC_LAYOUT)
        for sub in (Path("VOCdevkit") / "VOC2012", Path("VOC2012")):
            if not (root / "JPEGImages").is_dir() and (root / sub / "JPEGImages").is_dir():
                root = root / sub
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            _require_dir(root / sub, _VOC_LAYOUT)
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            found = ", ".join(sorted(p.stem for p in list_file.parent.glob("*.txt"))) or "none"
            raise RoutespaceError(f"missing file {list_file}: splits found: {found}")
        pairs = []
        for name in list_file.read_text().split():
            img_path = root / "JPEGImages" / f"{name}.jpg"
            label_path = root / "SegmentationClass" / f"{name}.png"
            for p in (img_path, label_path):
                if not p.is_file():
                    raise RoutespaceError(f"missing file {p}, listed as {name!r} in {list_file}")
            pairs.append((img_path, label_path))
        if not pairs:
            raise RoutespaceError(f"{list_file} lists no images: one image id per line, e.g. 2007_000032")
        return root, pairs

    def read_label(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            if im.mode in ("P", "L"):
                label = np.asarray(im)
            else:
                label = _decode_voc_colors(np.asarray(im.convert("RGB")), path)
        _check_labels(label, self.num_classes, path)
        return label.astype(np.uint8)


def _decode_voc_colors(rgb: np.ndarray, path: Path) -> np.ndarray:
    cmap = voc_colormap().astype(np.int64)
    keys = (cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]
    # Only the class colours and the border colour (index 255) are valid in a label image.
    valid = np.r_[np.arange(len(VOC_CLASSES)), IGNORE_INDEX]
    order = np.argsort(keys[valid])
    sorted_keys, sorted_idx = keys[valid][order], valid[order]
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pos = np.clip(np.searchsorted(sorted_keys, codes), 0, len(sorted_keys) - 1)
    unknown = sorted_keys[pos] != codes
    if unknown.any():
        colour = tuple(int(c) for c in rgb[unknown][0])
        raise RoutespaceError(f"label file {path} has colour {colour}, which is no VOC class colour: save labels as palette PNGs")
    return sorted_idx[pos].astype(np.uint8)


def load_synthetic(arg: str, split: str, size: int | tuple[int, int] | None = None) -> Dataset:
    """The registry's ``synthetic[:MIX]`` loader: the embedded set with scale mix ``arg`` (default uniform)."""
    mix = arg or "uniform"
    if mix not in SCALE_MIXES:
        raise RoutespaceError(f"unknown synthetic scale mix {arg!r} in {'synthetic:' + arg!r}: use {forms_of('synthetic')}")
    return embedded_default(split, size=size or (64, 64), scale_mix=mix)


def load_dataset(spec: str, split: str, size: int | tuple[int, int] | None = None) -> Dataset:
    """The data set named by ``spec``, one split of it (the kinds are the table
    :data:`routespace.evaluators.data_registry.DATASETS`).

    ``synthetic`` (the embedded default, log-uniform object sizes), ``synthetic:small`` /
    ``synthetic:large`` (biased to small / large objects), ``cityscapes:PATH``, ``voc:PATH``.
    ``size`` is ``(height, width)``; the synthetic default is 64x64, real data keep their own size
    unless given one.
    """
    entry, arg = data_set_kind(spec)
    return entry.load()(arg, split, size)
