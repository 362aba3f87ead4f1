"""ConfusionMatrix: known answers, an independent numpy cross-check, ignore handling, merging."""
import math

import numpy as np
import pytest
import torch

from routespace.evaluators.metrics import ConfusionMatrix
from routespace.spaces.errors import RoutespaceError


def test_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = ConfusionMatrix(4).update(pred, target)
    # rows = target, cols = prediction; the ignored pixel is not counted.
    expected = torch.tensor([[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.matrix, expected)
    # IoU = inter / (target count + predicted count - inter):
    # class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 3 / (3 + 4 - 3) = 3/4; class 2: 1 / (2 + 1 - 1) = 1/2;
    # class 3: absent from target and prediction -> NaN, left out of the mean.
    iou = cm.iou()
    assert iou[:3].tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_class_only_predicted_counts_as_zero():
    cm = ConfusionMatrix(3).update(torch.tensor([0, 0, 2]), torch.tensor([0, 0, 0]))
    assert cm.iou().tolist()[2] == 0.0
    assert math.isnan(cm.iou()[1])
    assert cm.miou() == pytest.approx((2 / 3 + 0.0) / 2)


def _numpy_confusion(pred, target, k, ignore):
    m = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != ignore:
            m[t, p] += 1
    return m


def _numpy_miou(m):
    ious = []
    for c in range(m.shape[0]):
        tp = m[c, c]
        union = m[c, :].sum() + m[:, c].sum() - tp
        if union > 0:
            ious.append(tp / union)
    return float(np.mean(ious))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_numpy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    k = 6
    target = rng.integers(0, k, size=(3, 17, 19))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, k, target.shape))
    cm = ConfusionMatrix(k)
    for b in range(3):  # batch by batch, as an evaluation loop does
        cm.update(torch.from_numpy(pred[b]), torch.from_numpy(target[b]))
    m = _numpy_confusion(pred, target, k, 255)
    assert np.array_equal(cm.matrix.numpy(), m)
    assert cm.miou() == pytest.approx(_numpy_miou(m))
    assert cm.pixel_accuracy() == pytest.approx(np.trace(m) / m.sum())


def test_ignore_index_respected_and_configurable():
    target = torch.tensor([255, 255, 1])
    pred = torch.tensor([0, 1, 1])
    assert ConfusionMatrix(2).update(pred, target).matrix.sum() == 1
    cm = ConfusionMatrix(2, ignore_index=0).update(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1]))
    assert cm.matrix.tolist() == [[0, 0], [1, 1]]
    # everything ignored: nothing counted, metrics undefined rather than 0
    empty = ConfusionMatrix(2).update(pred, torch.full((3,), 255))
    assert empty.matrix.sum() == 0 and math.isnan(empty.miou()) and math.isnan(empty.pixel_accuracy())


def test_scores_are_argmaxed():
    target = torch.randint(0, 4, (2, 5, 5))
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert ConfusionMatrix(4).update(logits, target).miou() == 1.0
    assert ConfusionMatrix(4).update(logits[0], target[0]).pixel_accuracy() == 1.0
    with pytest.raises(ValueError, match="does not match"):
        ConfusionMatrix(4).update(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.long))


def test_merge_equals_single_pass():
    rng = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 8, 8), generator=rng)
    pred = torch.randint(0, 5, (4, 8, 8), generator=rng)
    whole = ConfusionMatrix(5).update(pred, target)
    a = ConfusionMatrix(5).update(pred[:2], target[:2])
    b = ConfusionMatrix(5).update(pred[2:], target[2:])
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    assert torch.equal(ConfusionMatrix.from_matrix(whole.matrix).matrix, whole.matrix)
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(4))


def test_out_of_range_target_is_a_user_error():
    with pytest.raises(RoutespaceError, match="num_classes"):
        ConfusionMatrix(3).update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="prediction"):
        ConfusionMatrix(3).update(torch.tensor([0, 3]), torch.tensor([0, 1]))


def test_summary_is_json_ready():
    cm = ConfusionMatrix(3).update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    s = cm.summary(["bg", "a", "b"])
    assert s["miou"] == 1.0 and s["pixels"] == 2 and s["iou"] == {"bg": 1.0, "a": 1.0, "b": None}
