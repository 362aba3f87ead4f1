"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

``matrix[t, p]`` counts pixels of target class ``t`` predicted as class ``p``; pixels whose target
is ``ignore_index`` are not counted. Matrices add up, so per-process results combine exactly with
:meth:`ConfusionMatrix.merge` or :meth:`ConfusionMatrix.all_reduce`.

mIoU rule: the mean of per-class IoU over the classes whose union is non-empty, i.e. classes that
occur in the target or in the prediction. A class that is predicted but absent from the target
counts with IoU 0 (its false positives are penalised); a class absent from both is left out (its
IoU is NaN), so a small evaluation set does not drag the mean towards 0 or 1 for classes it lacks.
"""
from __future__ import annotations

import math

import torch

from routespace.spaces.errors import RoutespaceError


class ConfusionMatrix:
    """Accumulates a ``[num_classes, num_classes]`` int64 confusion matrix (rows target, columns prediction)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise RoutespaceError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, ignore_index: int | None = 255) -> "ConfusionMatrix":
        """Wrap an existing square count matrix (e.g. one read back from a report)."""
        matrix = torch.as_tensor(matrix, dtype=torch.int64)
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise RoutespaceError(f"a confusion matrix must be square, got shape {tuple(matrix.shape)}")
        cm = cls(matrix.shape[0], ignore_index)
        cm.matrix = matrix.clone().cpu()
        return cm

    def reset(self) -> None:
        self.matrix.zero_()

    def _labels_from(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Class indices from ``pred``: itself, or the argmax over its class axis when it holds scores."""
        if pred.shape == target.shape:
            return pred
        if pred.dim() == target.dim() + 1:
            # Scores [N, C, ...] against [N, ...] (class axis 1), or [C, ...] against [...] (axis 0).
            for axis in (1, 0):
                if axis < pred.dim() and pred.shape[axis] == self.num_classes:
                    if pred.shape[:axis] + pred.shape[axis + 1:] == target.shape:
                        return pred.argmax(axis)
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)} "
            f"(give class indices of the same shape, or scores with a class axis of size {self.num_classes})"
        )

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "ConfusionMatrix":
        """Count one batch: ``pred`` class indices shaped like ``target``, or scores with a class axis."""
        # Count on the inputs' device (cheap on a GPU); only the k x k result comes back to the CPU.
        pred = self._labels_from(pred, target).reshape(-1).to(target.device, torch.int64)
        target = target.reshape(-1).to(torch.int64)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return self
        k = self.num_classes
        t_min, t_max = int(target.min()), int(target.max())
        if t_min < 0 or t_max >= k:
            bad = t_min if t_min < 0 else t_max
            raise RoutespaceError(
                f"target holds class {bad}, outside [0, {k}) and not the ignore index {self.ignore_index}: "
                f"check that num_classes matches the data set"
            )
        p_min, p_max = int(pred.min()), int(pred.max())
        if p_min < 0 or p_max >= k:
            raise ValueError(f"prediction holds class {p_min if p_min < 0 else p_max}, outside [0, {k})")
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).view(k, k).cpu()
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (e.g. from another process) into this one."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self, group=None) -> "ConfusionMatrix":
        """Sum the matrix over all processes of ``torch.distributed`` (no-op when not initialised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            on_gpu = dist.get_backend(group) == "nccl"
            buf = self.matrix.cuda() if on_gpu else self.matrix
            dist.all_reduce(buf, group=group)
            self.matrix = buf.cpu()
        return self

    def iou(self) -> torch.Tensor:
        """Per-class IoU as float64; NaN for classes absent from both target and prediction."""
        m = self.matrix.to(torch.float64)
        inter = m.diagonal()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, math.nan))

    def miou(self) -> float:
        """Mean IoU over classes present in target or prediction (NaN when nothing was counted)."""
        iou = self.iou()
        present = ~torch.isnan(iou)
        return float(iou[present].mean()) if present.any() else math.nan

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly (NaN when nothing was counted)."""
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else math.nan

    def summary(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        """JSON-ready results: ``miou``, ``pixel_accuracy``, ``pixels``, per-class ``iou`` (None where NaN)."""
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")

        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "miou": clean(self.miou()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "pixels": int(self.matrix.sum()),
            "iou": {name: clean(float(v)) for name, v in zip(names, self.iou())},
        }

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())}, miou={self.miou():.4f})"


def ranks(values) -> list[float]:
    """Ranks 1..n of ``values``, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long sequences (nan when either is constant)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman needs two sequences of the same length, at least 2")
    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else math.nan
