"""Data: the seeded synthetic set, the Cityscapes/VOC loaders on generated fixture folders, load_dataset."""

import numpy as np
import pytest
import torch
from PIL import Image

from routespace.evaluators.datasets import (
    CityscapesSegmentation,
    VOCSegmentation,
    load_dataset,
    voc_colormap,
)
from routespace.evaluators.synthetic import SyntheticSegmentation, embedded_default
from routespace.spaces.errors import RoutespaceError


# ---------------------------------------------------------------- synthetic


def _same(a, b):
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_synthetic_items_have_the_promised_types():
    ds = SyntheticSegmentation(8, size=(48, 64), num_classes=5)
    img, label = ds[3]
    assert img.shape == (3, 48, 64) and img.dtype == torch.float32
    assert label.shape == (48, 64) and label.dtype == torch.int64
    assert ds.num_classes == 5 and len(ds.class_names) == 5 and len(ds) == 8


def test_synthetic_is_a_pure_function_of_seed_and_index():
    a = SyntheticSegmentation(20, seed=3)
    b = SyntheticSegmentation(20, seed=3)
    forward = [a[i] for i in range(20)]
    backward = [b[i] for i in reversed(range(20))][::-1]
    assert all(_same(x, y) for x, y in zip(forward, backward))
    assert _same(a[-1], a[19])
    # a longer set with the same seed starts with the same images
    assert _same(SyntheticSegmentation(100, seed=3)[7], a[7])
    other = SyntheticSegmentation(20, seed=4)
    assert not torch.equal(other[0][0], a[0][0])
    assert not any(torch.equal(a[i][0], a[i + 1][0]) for i in range(5))
    with pytest.raises(IndexError):
        a[20]


def test_synthetic_same_under_dataloader_workers():
    ds = SyntheticSegmentation(8, size=(32, 32), seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    images = torch.cat([x for x, _ in loader])
    assert torch.equal(images, torch.stack([ds[i][0] for i in range(8)]))


def test_synthetic_labels_match_recorded_objects():
    ds = SyntheticSegmentation(60, num_classes=7, seed=1)
    seen = set()
    for i in range(len(ds)):
        label = ds[i][1]
        assert 0 <= int(label.min()) and int(label.max()) < 7
        present = set(label.unique().tolist())
        assert present <= {0} | {o.cls for o in ds.objects(i)}
        seen |= present
    assert seen == set(range(7))  # every class, the 'cross' shape included, occurs somewhere


def test_synthetic_is_roughly_normalised_and_not_mostly_background():
    ds = embedded_default("val", num_images=64)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.stack([ds[i][1] for i in range(len(ds))])
    assert images.mean().abs() < 0.3 and 0.7 < images.std() < 1.3
    assert 0.05 < (labels > 0).float().mean() < 0.5


def test_recorded_object_sizes_within_bounds_and_follow_scale_mix():
    means = {}
    for mix in ("small", "uniform", "large", 0.5):
        ds = SyntheticSegmentation(150, object_px=(6, 40), scale_mix=mix, seed=2)
        scales = [s for i in range(len(ds)) for s in ds.object_scales(i)]
        assert all(6 - 1e-9 <= s <= 40 + 1e-9 for s in scales)
        assert ds.mean_object_px(0) == pytest.approx(np.mean(ds.object_scales(0)))
        means[mix] = float(np.mean(scales))
    assert means["small"] < means["uniform"] < means[0.5] < means["large"]
    assert means["small"] < 15 and means["large"] > 25


def test_larger_objects_cover_more_pixels():
    small = SyntheticSegmentation(40, scale_mix="small", seed=0)
    large = SyntheticSegmentation(40, scale_mix="large", seed=0)
    fg = [float(torch.stack([d[i][1] for i in range(40)]).gt(0).float().mean()) for d in (small, large)]
    assert fg[0] < fg[1]


def test_embedded_default_splits():
    train, val = embedded_default("train"), embedded_default("val")
    assert len(train) == 2000 and len(val) == 200
    assert train.seed != val.seed and not torch.equal(train[0][0], val[0][0])
    assert len(embedded_default("train", num_images=10)) == 10
    wide = embedded_default("val", size=(32, 96))
    assert wide[0][0].shape == (3, 32, 96) and wide.object_px == (2.0, 30.0)  # sizes follow the shorter side
    assert embedded_default("val").object_px == (4.0, 60.0)
    with pytest.raises(RoutespaceError, match="train, val"):
        embedded_default("test")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"object_px": (10, 5)}, "object_px"),
        ({"object_px": (100, 120)}, "larger than the image"),
        ({"scale_mix": "huge"}, "small, large"),
        ({"scale_mix": 2.0}, r"\[-1, 1\]"),
        ({"seed": -1}, "seed"),
        ({"size": (0, 64)}, "size"),
    ],
)
def test_synthetic_bad_parameters(kwargs, match):
    with pytest.raises(RoutespaceError, match=match):
        SyntheticSegmentation(4, **kwargs)


# ---------------------------------------------------------------- Cityscapes fixtures


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _cityscapes(root, label_ids, train_ids=None, split="train", city="aachen", name="aachen_000000_000019"):
    h, w = label_ids.shape
    _png(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", _rgb(h, w, 0))
    _png(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", label_ids)
    if train_ids is not None:
        _png(root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png", train_ids)
    return root


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    # road 7->0, sidewalk 8->1, unlabeled 0->255, parking 9->255, car 26->13, bicycle 33->18, sky 23->10
    ids = np.array([[7, 8, 0, 9], [26, 33, 23, 7]], dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    root = _cityscapes(tmp_path, ids)
    ds = CityscapesSegmentation(root, "train")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.ignore_index == 255
    img, label = ds[0]
    assert img.shape == (3, 32, 64) and img.dtype == torch.float32 and label.dtype == torch.int64
    expected = np.array([[0, 1, 255, 255], [13, 18, 10, 0]]).repeat(16, 0).repeat(16, 1)
    assert np.array_equal(label.numpy(), expected)


def test_cityscapes_prefers_train_id_files(tmp_path):
    ids = np.full((32, 32), 7, np.uint8)
    train_ids = np.full((32, 32), 5, np.uint8)
    train_ids[0, 0] = 255
    root = _cityscapes(tmp_path, ids, train_ids)
    label = CityscapesSegmentation(root, "train")[0][1]
    assert label[0, 0] == 255 and label[1, 1] == 5


def test_cityscapes_sizes_and_crops(tmp_path):
    ids = np.random.default_rng(0).choice([7, 8, 26, 0], size=(80, 100)).astype(np.uint8)
    root = _cityscapes(tmp_path, ids, split="train")
    _cityscapes(tmp_path, ids, split="val", city="frankfurt", name="frankfurt_000000_000294")
    val = load_dataset(f"cityscapes:{root}", "val", size=(64, 96))
    assert val.mode == "resize" and val[0][0].shape == (3, 64, 96)
    assert _same(val[0], val[0])
    train = CityscapesSegmentation(root, "train", size=(64, 64), seed=1)
    assert train.mode == "random_crop"
    first = train[0]
    assert first[0].shape == (3, 64, 64) and _same(first, CityscapesSegmentation(root, "train", size=64, seed=1)[0])
    crops = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        crops.add(train[0][1].numpy().tobytes())
    assert len(crops) > 1
    # a crop larger than the image pads the label with the ignore index
    big = CityscapesSegmentation(root, "val", size=(96, 128), mode="center_crop")
    img, label = big[0]
    assert label.shape == (96, 128) and (label == 255).sum() >= 96 * 128 - 80 * 100
    with pytest.raises(RoutespaceError, match="divisible by 32"):
        CityscapesSegmentation(root, "train", size=(50, 64))


def test_cityscapes_wrong_layout_names_what_is_missing(tmp_path):
    with pytest.raises(RoutespaceError, match="missing folder .*leftImg8bit.*expected"):
        CityscapesSegmentation(tmp_path, "train")
    root = _cityscapes(tmp_path / "cs", np.full((32, 32), 7, np.uint8))
    with pytest.raises(RoutespaceError, match="splits found .*train"):
        CityscapesSegmentation(root, "val")
    (root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(RoutespaceError, match="no label for .*aachen_000000_000019_gtFine_labelIds.png"):
        CityscapesSegmentation(root, "train")


def test_cityscapes_bad_label_values(tmp_path):
    ids = np.full((32, 32), 7, np.uint8)
    ids[3, 3] = 40
    ds = CityscapesSegmentation(_cityscapes(tmp_path / "a", ids), "train")
    with pytest.raises(RoutespaceError, match=r"labelIds.png has value 40"):
        ds[0]
    train_ids = np.full((32, 32), 19, np.uint8)
    ds = CityscapesSegmentation(_cityscapes(tmp_path / "b", np.full((32, 32), 7, np.uint8), train_ids), "train")
    with pytest.raises(RoutespaceError, match=r"labelTrainIds.png has value 19.*\[0, 19\) or 255"):
        ds[0]


# ---------------------------------------------------------------- VOC fixtures


def _voc(root, labels, split="train", rgb_labels=False):
    base = root / "VOCdevkit" / "VOC2012"
    names = []
    for k, label in enumerate(labels):
        name = f"2007_{k:06d}"
        names.append(name)
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(*label.shape, k)).save(base / "JPEGImages" / f"{name}.jpg")
        path = base / "SegmentationClass" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if rgb_labels:
            Image.fromarray(voc_colormap()[label]).save(path)
        else:
            im = Image.fromarray(label, "P")
            im.putpalette(voc_colormap().ravel().tolist())
            im.save(path)
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text("\n".join(names) + "\n")
    return base


def _voc_label(h=40, w=56):
    label = np.zeros((h, w), np.uint8)
    label[5:20, 5:30] = 15  # person
    label[25:35, 10:50] = 7  # car
    label[4, :] = 255  # border
    return label


@pytest.mark.parametrize("rgb_labels", [False, True])
def test_voc_reads_palette_and_colour_labels(tmp_path, rgb_labels):
    label = _voc_label()
    base = _voc(tmp_path, [label, label[::-1].copy()], rgb_labels=rgb_labels)
    for root in (base, tmp_path):  # VOCdevkit/VOC2012 itself or a folder above it
        ds = VOCSegmentation(root, "train")
        assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[15] == "person"
        img, got = ds[0]
        assert img.shape == (3, 40, 56) and np.array_equal(got.numpy(), label)
    resized = load_dataset(f"voc:{base}", "train", size=(32, 64))
    img, got = resized[1]
    assert img.shape == (3, 32, 64) and set(got.unique().tolist()) <= {0, 7, 15, 255}


def test_voc_wrong_layout_and_bad_labels(tmp_path):
    with pytest.raises(RoutespaceError, match="missing folder .*JPEGImages.*expected"):
        VOCSegmentation(tmp_path, "train")
    base = _voc(tmp_path, [_voc_label()])
    with pytest.raises(RoutespaceError, match="val.txt: splits found: train"):
        VOCSegmentation(base, "val")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000000\n2007_999999\n")
    with pytest.raises(RoutespaceError, match="2007_999999.jpg"):
        VOCSegmentation(base, "train")
    bad = _voc_label()
    bad[0, 0] = 30
    base = _voc(tmp_path / "bad", [bad])
    with pytest.raises(RoutespaceError, match=r"2007_000000.png has value 30.*\[0, 21\) or 255"):
        VOCSegmentation(base, "train")[0]


# ---------------------------------------------------------------- load_dataset


def test_load_dataset_specs(tmp_path):
    ds = load_dataset("synthetic", "val")
    assert isinstance(ds, SyntheticSegmentation) and len(ds) == 200 and ds.size == (64, 64)
    assert load_dataset("synthetic:small", "train", size=(32, 32)).scale_mix == "small"
    assert load_dataset("synthetic:large", "val").scale_mix == "large"
    with pytest.raises(RoutespaceError, match="synthetic, synthetic:small, synthetic:large, cityscapes:PATH or voc:PATH"):
        load_dataset("imagenet:/data", "train")
    with pytest.raises(RoutespaceError, match="synthetic:small"):
        load_dataset("synthetic:medium", "train")
    with pytest.raises(RoutespaceError, match="cityscapes:PATH"):
        load_dataset("cityscapes", "train")
    with pytest.raises(RoutespaceError, match="missing folder"):
        load_dataset(f"voc:{tmp_path / 'nowhere'}", "train")


# ---------------------------------------------------------------- the data-set registry

# A tiny fixture per registered data set: name -> make(tmp_path) -> the spec's ARG ('' for none). A new
# entry of DATASETS needs one here; test_every_registered_data_set_loads_its_fixture then covers it.
REGISTRY_FIXTURES = {
    "synthetic": lambda tmp_path: "",
    "cityscapes": lambda tmp_path: str(_cityscapes(tmp_path / "cityscapes", np.full((64, 96), 7, np.uint8))),
    "voc": lambda tmp_path: str(_voc(tmp_path / "voc", [_voc_label(64, 96)])),
}


def _registry_specs():
    from routespace.evaluators.data_registry import DATASETS

    return [(name, form) for name, entry in DATASETS.items() for form in entry.forms]


def test_registry_entries_have_fixtures_forms_and_help():
    from routespace.evaluators.data_registry import DATASETS, data_forms, data_help
    from routespace.evaluators.synthetic import SCALE_MIXES

    assert set(REGISTRY_FIXTURES) == set(DATASETS), "every registered data set needs a fixture here"
    for name, entry in DATASETS.items():
        assert entry.name == name and entry.description and entry.forms
        assert all(f == name or f.startswith(name + ":") for f in entry.forms)
        assert callable(entry.load())
    # the synthetic forms are its scale mixes
    assert DATASETS["synthetic"].forms == ("synthetic", *(f"synthetic:{m}" for m in SCALE_MIXES if m != "uniform"))
    # every command's --data help names every form (compare/demo/train: pending, see PENDING_DATA_HELP)
    from routespace.cli.main import make_parser

    commands = make_parser()._subparsers._group_actions[0].choices
    with_data = {name: p for name, p in commands.items() for a in p._actions if a.dest == "data"}
    assert {"search", "evaluate", "extract"} <= set(with_data)
    for name, parser in with_data.items():
        if name in PENDING_DATA_HELP:
            continue
        (action,) = [a for a in parser._actions if a.dest == "data"]
        assert all(form in action.help for form in data_forms()), (name, action.help)
    assert data_help().startswith("synthetic (default), ")


# commands whose --data help is still written by hand (cli/compare_cmd.py, cli/train_cmd.py): to read
# data_registry.data_help() like the others, then to be removed from here
PENDING_DATA_HELP: set[str] = set()


@pytest.mark.parametrize("name, form", _registry_specs())
def test_every_registered_data_set_loads_its_fixture(tmp_path, name, form):
    arg = REGISTRY_FIXTURES[name](tmp_path)
    spec = form.replace("PATH", arg) if "PATH" in form else form
    for size in ((32, 64), None):
        ds = load_dataset(spec, "train", size=size)
        assert len(ds) >= 1 and isinstance(ds.num_classes, int) and ds.num_classes >= 2
        img, label = ds[0]
        assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 3
        assert label.dtype == torch.int64 and label.shape == img.shape[1:]
        if size is not None:
            assert tuple(img.shape[1:]) == size
        valid = (label >= 0) & (label < ds.num_classes) | (label == 255)
        assert bool(valid.all())
    if "PATH" in form:  # a folder kind without its folder is refused in one line
        with pytest.raises(RoutespaceError, match=f"{name} needs a folder"):
            load_dataset(name, "train")
