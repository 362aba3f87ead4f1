"""The typed evaluation record: JSON round trip, refusal of what it cannot read, and the dynamic net's
latencies timed interleaved (skipping and dense alternate in one loop)."""
import json

import pytest
import torch

from routespace.evaluators import evaluate as ev
from routespace.evaluators.evalrecord import SCHEMA, Evaluation
from routespace.evaluators.timing import interleaved_latency_ms
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import RoutingSpace
from routespace.spaces.supernet import DynamicNet

SMALL = RoutingSpace(layers=3, base_channels=8, num_classes=3, input_size=(32, 32), name="small")


def _val(n=4):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n, 32, 32), generator=g))
    data.num_classes = 3
    return data


def test_dynamic_evaluation_round_trips_and_times_both_forwards_interleaved(monkeypatch):
    order = []
    net = DynamicNet(SMALL).eval()
    real_skip, real_dense = net.forward_skipping, net.forward
    monkeypatch.setattr(net, "forward_skipping", lambda x, *a, **k: (order.append("skip"), real_skip(x, *a, **k))[1])
    monkeypatch.setattr(net, "forward", lambda x, *a, **k: (order.append("dense"), real_dense(x, *a, **k))[1])
    result = ev.evaluate(net, _val(), batch_size=2, device="cpu", latency_repeats=3, latency_images=2)
    timed = order[len(_val()) // 2:]  # after the two validation batches (skipping executor)
    assert timed[:2] == ["skip", "dense"] and timed == ["skip", "dense"] * (len(timed) // 2)
    assert len(timed) == 2 * 2 * (3 + 2)  # 2 images x (3 repeats + 2 warm-up) x both forwards
    d = result.to_dict()
    assert d["schema"] == SCHEMA and d["latency_interleaved"] is True
    q1, q3 = d["latency_ms_iqr"]
    assert q1 <= d["latency_ms"] <= q3
    back = Evaluation.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == json.loads(json.dumps(d))
    assert back.dynamic and back["route_scale_spearman"] is None and set(back) == set(d)


def test_a_newer_or_foreign_record_is_refused():
    with pytest.raises(RoutespaceError, match="newer routespace"):
        Evaluation.from_dict({"schema": SCHEMA + 1, "miou": 0.5, "images": 1, "size": [8, 8]})
    with pytest.raises(RoutespaceError, match="not an evaluation result"):
        Evaluation.from_dict({"kind": "dynamic"})


def test_interleaved_latency_keeps_each_function_apart():
    calls = []
    times = interleaved_latency_ms({"a": lambda x: calls.append(("a", x)), "b": lambda x: calls.append(("b", x))},
                                   [1, 2], repeats=2, warmup=1)
    assert calls == [("a", 1), ("b", 1), ("a", 2), ("b", 2)] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
