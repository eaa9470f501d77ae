"""Large samples run through onnxruntime a few at a time (`ort_session.run_in_calls`), with
the same outputs as one call of the whole feed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcomp.measure.ort_session import CALL_INPUT_BYTES, call_rows, create_session, run_in_calls


def _model(outputs: str) -> bytes:
    """A 3x3 convolution of a (N, 3, H, W) input, then per `outputs`: "batch" (the conv
    map), "scalar" (its sum too) or "time-major" (its (C, N, ...) transpose too)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph_outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])]
    if outputs == "scalar":
        nodes.append(helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0))
        graph_outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    if outputs == "time-major":
        nodes.append(helper.make_node("Transpose", ["y"], ["t"], perm=[1, 0, 2, 3]))
        graph_outputs.append(
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, "n", "h", "w"])
        )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        graph_outputs,
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _images(count: int, side: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(count, 3, side, side)).astype(np.float32)


def test_call_rows_fits_the_byte_budget_and_keeps_small_samples_together():
    per_image = 3 * 320 * 320 * 4
    assert call_rows({"x": _images(64, 320)}) == CALL_INPUT_BYTES // per_image
    assert call_rows({"x": _images(2, 320)}) == 2  # never more than the feed has
    assert call_rows({"x": _images(1, 1200)}) == 1  # one sample over the budget: one call
    ids = np.zeros((64, 128), np.int64)
    assert call_rows({"ids": ids, "mask": ids}) == 64
    # all inputs count: a second large input halves the samples per call
    both = {"a": _images(64, 320), "b": _images(64, 320)}
    assert call_rows(both) == CALL_INPUT_BYTES // (2 * per_image)


def test_outputs_in_calls_equal_one_call_of_the_whole_feed():
    session = create_session(_model("batch"), threads=1)
    feed = {"x": _images(7, 600)}  # 4.3 MB each: one sample per call
    assert call_rows(feed) == 1
    whole = session.run(None, feed)
    parts = run_in_calls(session, feed)
    assert [p.shape for p in parts] == [w.shape for w in whole] == [(7, 4, 600, 600)]
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-5, atol=1e-5)
    # named outputs are kept in the order asked for
    (named,) = run_in_calls(session, feed, ["y"])
    np.testing.assert_array_equal(named, parts[0])


def test_outputs_that_do_not_follow_the_samples_make_it_one_call():
    for kind, shape in (("scalar", ()), ("time-major", (4, 5, 600, 600))):
        session = create_session(_model(kind), threads=1)
        feed = {"x": _images(5, 600)}
        whole = session.run(None, feed)
        parts = run_in_calls(session, feed)
        assert parts[1].shape == whole[1].shape == shape, kind
        np.testing.assert_allclose(parts[1], whole[1], rtol=1e-5, atol=1e-3)


def test_inputs_that_do_not_share_a_sample_axis_go_in_one_call():
    """A broadcast input (one row for every sample) cannot be split with the others."""
    shape = ["n", 3, "h", "w"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, "h", "w"]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = create_session(model.SerializeToString(), threads=1)
    feed = {"a": _images(4, 600), "b": _images(1, 600)}
    assert call_rows(feed) == 1
    (joined,) = run_in_calls(session, feed)
    assert joined.shape == (4, 3, 600, 600)
    np.testing.assert_array_equal(joined, session.run(None, feed)[0])
