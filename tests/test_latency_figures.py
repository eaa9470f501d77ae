"""The end-of-run latency figures: their structure, the speed-up interval computed from given
numbers, `≈` when the spreads overlap, the conservative latency constraints and the machine's
load. No test asserts how fast anything is."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mcomp.measure.machine_load import BUSY_SHARE_WARNING, LoadProbe, busy_warning
from mcomp.measure.metrics import BUILTIN
from mcomp.measure.side_by_side import LatencyStats, runs_per_round, time_side_by_side
from mcomp.recipe.schema import ConstraintsSpec, LatencySpec
from mcomp.report.constraints import absolute_budget, check_constraints
from mcomp.report.speedup import RESOLUTION, median_interval, speedup, speedup_between


def figures(*rounds: float) -> dict:
    return LatencyStats(tuple(rounds)).as_dict()


def metrics(b1: tuple[float, ...], batch: tuple[float, ...], metric: float = 0.9) -> dict:
    return {
        "metric": metric,
        "size_bytes": 1000,
        "size_compressed_bytes": 500,
        "latency_ms_b1": LatencyStats(b1).median_ms,
        "latency_ms_batch": LatencyStats(batch).median_ms,
        "latency": {"b1": figures(*b1), "batch": figures(*batch)},
    }


def test_speedup_is_the_median_round_ratio_and_their_range():
    found = speedup(figures(2.0, 2.1, 1.9), figures(1.0, 1.1, 0.95))
    assert found.paired == pytest.approx((2.0, 2.1 / 1.1, 1.9 / 0.95))
    assert found.value == pytest.approx(2.0)  # the median round
    assert found.low == pytest.approx(2.1 / 1.1) and found.high == pytest.approx(2.0)
    assert found.resolved and found.text() == "×2"
    assert found.rounds_at_least(2.0) == (2, 3)
    # a slow round of both (the machine got busy) cancels in the round-by-round ratio
    drift = speedup(figures(2.0, 4.0, 2.0, 4.0, 2.0), figures(1.0, 2.0, 1.0, 2.0, 1.0))
    assert drift.value == drift.low == drift.high == pytest.approx(2.0) and drift.resolved


def test_median_interval_is_the_binomial_order_statistics():
    # 5 values or fewer: no narrower interval keeps 95 %, so the whole range
    assert median_interval((3.0, 1.0, 2.0, 5.0, 4.0)) == (1.0, 5.0)
    # 15 values: the 5th to the 11th (P(fewer than 5 below the median) = 0.0592 / 2 > 2.5 %
    # would be too narrow at the 6th; 4 below = 0.0176 keeps 96.5 %)
    assert median_interval(tuple(float(v) for v in range(15))) == (4.0, 10.0)
    assert median_interval(tuple(float(v) for v in range(6))) == (1.0, 4.0)


def test_an_unlucky_round_of_fifteen_does_not_decide_a_speedup():
    # a bimodal machine: 3 of 15 baseline blocks ran on the slow level (x1.4); the true
    # speed-up is 1, the range of the ratios says up to x1.4, the median's interval does not
    base = [1.4 if r in (2, 7, 11) else 1.0 for r in range(15)]
    found = speedup(figures(*base), figures(*([1.0] * 15)))
    assert max(found.paired) == pytest.approx(1.4)
    assert found.value == found.low == found.high == pytest.approx(1.0)
    assert found.text() == "≈"


def test_round_ratios_on_both_sides_of_one_print_as_approximately_equal():
    # 1.1x in the median round, 0.9x in another: not a result
    found = speedup(figures(1.3, 0.9, 1.1), figures(1.0, 1.0, 1.0))
    assert found.value == pytest.approx(1.1) and found.low < 1 < found.high
    assert not found.resolved and found.text() == "≈"
    # apart from 1, but by less than the timing's resolution: still ≈
    close = speedup(figures(1.03, 1.03, 1.03), figures(1.0, 1.0, 1.0))
    assert 1 < close.low < 1 + RESOLUTION and close.text() == "≈"
    # clearly slower
    slower = speedup(figures(1.0, 1.0, 1.02), figures(2.0, 2.1, 1.9))
    assert slower.resolved and slower.text() == "×0.5"


def test_without_rounds_overlapping_spreads_print_as_approximately_equal():
    def spread(median: float, low: float, high: float) -> dict:
        return {"median_ms": median, "min_ms": low, "max_ms": high}

    overlapping = speedup(spread(1.3, 1.0, 1.6), spread(1.0, 0.9, 1.2))
    assert overlapping.value == pytest.approx(1.3)
    assert overlapping.low == pytest.approx(1.0 / 1.2) and overlapping.high == pytest.approx(
        1.6 / 0.9
    )
    assert overlapping.text() == "≈"
    apart = speedup(spread(2.0, 1.9, 2.1), spread(1.0, 0.95, 1.1))
    assert apart.low == pytest.approx(1.9 / 1.1) and apart.text() == "×2"


def test_reports_without_a_spread_still_give_a_speedup():
    old = {"latency_ms_b1": 2.0, "latency_ms_batch": 4.0}
    new = {"latency_ms_b1": 1.0, "latency_ms_batch": 4.0}
    assert speedup_between(old, new, "b1").text() == "×2"
    assert speedup_between(old, new, "batch").text() == "≈"
    assert speedup_between(old, {"latency_ms_b1": None}, "b1") is None


@pytest.mark.parametrize(
    ("base", "final", "limit", "ok", "certainty"),
    [
        ((2.0, 2.0, 2.0), (1.0, 1.0, 1.0), 1.5, True, "clear"),
        # 1.71x in the median round, but one round gave 1.33x: not sure, counted as broken
        ((2.0, 1.6, 2.4), (1.0, 1.2, 1.4), 1.5, False, "uncertain"),
        ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 1.5, False, "clear"),
    ],
)
def test_min_speedup_decides_on_the_conservative_end(base, final, limit, ok, certainty):
    (result,) = check_constraints(
        ConstraintsSpec(min_speedup=limit),
        metrics(base, base),
        metrics(final, final),
        BUILTIN["accuracy"],
    )
    assert result["ok"] is ok and result["certainty"] == certainty
    paired = [b / f for b, f in zip(base, final, strict=True)]
    assert result["value"] == pytest.approx(min(paired), abs=1e-4) == result["interval"][0]
    assert result["interval"][1] == pytest.approx(max(paired), abs=1e-4)
    assert result["estimate"] == pytest.approx(np.median(paired), abs=1e-4)
    assert result["rounds_meeting"] == f"{sum(ratio >= limit for ratio in paired)}/3"


def test_max_latency_uses_the_slowest_round():
    final = metrics((1.0, 1.2, 0.9), (5.0, 5.0, 5.0))
    (result,) = check_constraints(
        ConstraintsSpec(max_latency_ms=1.1), final, final, BUILTIN["accuracy"]
    )
    assert result["value"] == 1.2 and result["ok"] is False
    assert result["certainty"] == "uncertain" and result["rounds_meeting"] == "2/3"


@pytest.mark.parametrize(
    ("metric", "before", "after", "ok"),
    [
        ("mse", 0.010, 0.0104, True),  # +4 % of the baseline's mse
        ("mse", 0.010, 0.0106, False),  # +6 %
        ("mse", 0.010, 0.002, True),  # an improvement
        ("accuracy", 0.90, 0.86, True),  # -4.4 %
        ("accuracy", 0.90, 0.85, False),  # -5.6 %
    ],
)
def test_relative_metric_budget(metric, before, after, ok):
    spec = ConstraintsSpec(max_relative_drop="5%")
    assert spec.max_relative_drop == pytest.approx(0.05)
    base, final = metrics((1.0,), (1.0,), before), metrics((1.0,), (1.0,), after)
    (result,) = check_constraints(spec, base, final, BUILTIN[metric])
    assert result["ok"] is ok
    assert absolute_budget(spec, before) == pytest.approx(0.05 * before)
    both = ConstraintsSpec(max_relative_drop=0.05, max_accuracy_drop=0.0001)
    assert absolute_budget(both, before) == pytest.approx(min(0.0001, 0.05 * before))


def test_a_percentage_that_is_not_a_number_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="percentage"):
        ConstraintsSpec(max_relative_drop="five%")


def test_runs_are_shared_among_rounds_with_a_floor():
    assert runs_per_round(30, 5) == {"b1": 6, "batch": 3}
    assert runs_per_round(100, 4) == {"b1": 25, "batch": 13}
    assert runs_per_round(1, 5) == {"b1": 3, "batch": 1}


def _scaling_model(scale: float) -> bytes:
    # x ─ MatMul(scale · I) ─ y
    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [4, 4], (scale * np.eye(4, dtype=np.float32)).ravel()
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_side_by_side_timing_gives_every_model_every_round():
    feeds = {
        "b1": {"x": np.ones((1, 4), np.float32)},
        "batch": {"x": np.ones((8, 4), np.float32)},
    }
    one, two = _scaling_model(1.0), _scaling_model(2.0)
    stats = time_side_by_side(
        [one, two, _scaling_model(1.0)],
        feeds,
        threads=1,
        rounds=3,
        warmup=1,
        runs={"b1": 5, "batch": 3},
    )
    assert len(stats) == 3
    for model in stats:
        assert set(model) == {"b1", "batch"}
        for label, calls in (("b1", 5), ("batch", 3)):
            figure = model[label]
            assert len(figure.rounds_ms) == 3 and figure.calls_per_round >= calls
            assert figure.min_ms <= figure.median_ms <= figure.max_ms
            assert set(figure.as_dict()) == {
                "median_ms",
                "min_ms",
                "max_ms",
                "rounds_ms",
                "calls_per_round",
            }
    assert stats[2] is stats[0] and stats[1] is not stats[0]  # identical bytes: timed once


def test_load_probe_reports_own_and_others_cpu_time():
    probe = LoadProbe.start()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    facts = probe.stop()
    assert facts["own_cpu_s"] >= 0 and facts["wall_s"] > 0
    assert {"load_before", "load_after", "others_share", "steal_share", "cpus"} <= set(facts)
    if facts["others_share"] is not None:  # Linux
        assert facts["machine_cpu_s"] >= facts["others_cpu_s"] >= 0


def test_busy_warning_names_the_share_of_the_cpus():
    quiet = {"others_share": BUSY_SHARE_WARNING / 2, "cpus": 2}
    busy = {"others_share": 0.4, "cpus": 2, "others_cpu_s": 4.0, "wall_s": 5.0}
    assert busy_warning(quiet) is None and busy_warning({"others_share": None}) is None
    assert "40% of the 2 CPUs" in busy_warning(busy)


def test_latency_spec_rounds_default_and_bounds():
    from pydantic import ValidationError

    assert LatencySpec().rounds == 15
    with pytest.raises(ValidationError):
        LatencySpec(rounds=0)


def _entry(name: str, rounds_b1, rounds_batch, details=None) -> dict:
    return {
        "name": name,
        "notes": [],
        "details": details or {},
        "metrics": metrics(tuple(rounds_b1), tuple(rounds_batch)),
    }


@pytest.mark.parametrize(
    ("int8_rounds", "said"),
    [
        ((0.5, 0.5, 0.52), None),  # clearly faster: nothing to say
        ((1.0, 0.95, 1.06), "not measurably faster than"),
        ((1.5, 1.6, 1.55), "slower than"),
    ],
)
def test_int8_verdict_comes_from_the_end_of_run_figures(int8_rounds, said):
    from mcomp.progress import NullProgress
    from mcomp.run.latency import _int8_verdict

    fp32 = _entry("finetune", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    advice = "try: a larger batch"
    int8 = _entry("quantize", (1.0,) * 3, int8_rounds, {"speed_advice": advice, "mode": "static"})
    progress = NullProgress()
    _int8_verdict(fp32, int8, 32, progress)
    if said is None:
        assert int8["notes"] == [] and progress.warnings == []
        return
    (note,) = int8["notes"]
    assert note.startswith(f"int8 is {said} its fp32 input at batch 32") and note.endswith(advice)
    assert progress.warnings == [f"quantize: {note}"]
    # a stage that quantizes nothing gets no verdict
    other = _entry("export", (1.0,) * 3, int8_rounds)
    _int8_verdict(fp32, other, 32, progress)
    assert other["notes"] == []
