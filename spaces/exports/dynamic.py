"""Model exports of the dynamic-routing supernet: its dense masked forward with the gates, logits only.

What is exported is :meth:`DynamicNet.forward` in eval mode, wrapped so the program returns
``net(x).logits`` (input ``image`` (N, 3, H, W), output ``logits`` (N, classes, H, W), N, H and W
symbolic, as for static nets). Every cell and edge runs on every image and each edge's tensor is
multiplied by its gate, so the result equals the skipping executor's (:meth:`DynamicNet.forward_skipping`)
but the cost does not fall with the closed gates: the skipping itself is data-dependent control flow per
image and node and is not exported.

Two pieces of the eager net are not exportable as they are and are replaced in the exported copy by
equivalents (the net given is left untouched):

- the cost table, looked up by the input size (a cached function of Python ints; under torch.export the
  size is symbolic), is fixed at the example size: it only feeds the FLOPs figures, which are not
  exported;
- the decoder's "only the images that have a feature at this scale or above" is a data-dependent branch
  and row selection; in eval mode (BN with running statistics, each image on its own) running the lateral
  conv on every image and zeroing the images without a feature is the same function (``torch.where``).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..cells import Decoder
from ..errors import RoutespaceError
from ..supernet import DynamicNet, cost_table

STATE_DICT_FORMAT = "routespace.dynamic_state_dict"  # a state-dict export of a dynamic net
SPEC_FILE = "routespace_dynamic_spec.json"  # extra file of a .pt2 export: net.spec(), for reference


class _RowMasked(nn.Module):
    """A decoder lateral conv whose output is zero for the images outside ``mask`` ((N, 1, 1, 1) bool, set
    by :class:`_MaskedDecoder` before each pass; None: every image)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.mask: torch.Tensor | None = None

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        y = self.conv(d)
        return y if self.mask is None else torch.where(self.mask, y, torch.zeros((), dtype=y.dtype, device=y.device))


class _MaskedDecoder(nn.Module):
    """The same function as :class:`Decoder` in eval mode, without data-dependent branches: the decoder runs
    without ``present`` (every lateral conv on every image) and each lateral's output is zeroed for the
    images that have no feature at or above its scale."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        decoder.lateral = nn.ModuleList(_RowMasked(conv) for conv in decoder.lateral)
        self.decoder = decoder

    def forward(self, feats: list, sizes: list, out_size: tuple, present: list | None = None) -> torch.Tensor:
        has: torch.Tensor | None = None  # images with a feature at this scale or above
        for s in range(self.decoder.top_scale, -1, -1):
            if present is not None and present[s] is not None:
                has = present[s] if has is None else has | present[s]
            self.decoder.lateral[s].mask = None if has is None else has[:, None, None, None]
        return self.decoder(feats, sizes, out_size)


class DynamicLogits(nn.Module):
    """``net(x).logits`` of an eval-mode copy of a :class:`DynamicNet`, in a form torch.export and the
    ONNX exporters can trace (see the module docstring); ``size`` is the example input size."""

    def __init__(self, net: DynamicNet, size: tuple[int, int]) -> None:
        super().__init__()
        if not isinstance(net, DynamicNet):
            raise RoutespaceError(f"expected a DynamicNet, got {type(net).__name__}")
        inner = copy.deepcopy(net).eval()
        table = cost_table(inner.space, (int(size[0]), int(size[1])), inner.gate_resolution)
        inner._table = lambda x: table  # FLOPs figures only; the logits do not depend on it
        inner.decoder = _MaskedDecoder(inner.decoder)
        self.net = inner
        self.num_classes = inner.space.num_classes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).logits


def dynamic_net_from_spec(text: str, source: str | Path) -> DynamicNet:
    """An untrained :class:`DynamicNet` from the JSON of ``net.spec()`` (a dynamic state-dict export's spec)."""
    import json

    from ...evaluators.evaluate import build_model

    try:
        spec = json.loads(text)
    except (TypeError, ValueError):
        raise RoutespaceError(f"{source}: the embedded dynamic net spec is not JSON") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("space"), dict):
        raise RoutespaceError(f"{source}: the embedded dynamic net spec has no 'space'")
    return build_model("dynamic", spec, source)
