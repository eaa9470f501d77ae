"""The fp32 graph rewrites made before onnxruntime's quantizer, each on, off or `auto`:
cross-layer equalization (`equalize.py`, static mode) and SmoothQuant (`smoothquant.py`).

`auto` measures instead of guessing, as `calibration.method: auto` does: the prepared model
is quantized with and without the rewrite (SmoothQuant: with each `alphas` strength) and the
one whose int8 outputs are closest to fp32's on up to 64 calibration samples is kept. Both
rewrites keep the fp32 function (up to float rounding), so every later step — statistics,
bias correction, the fallback search — simply starts from the rewritten model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcomp.compressors.quantize.auto_calibration import SCORING_SAMPLES, quantize_once
from mcomp.compressors.quantize.calibration_reader import graph_inputs
from mcomp.compressors.quantize.int8_check import float_outputs, relative_output_error
from mcomp.compressors.quantize.ort_quantize import PreparedModel
from mcomp.compressors.quantize.statistics import StatisticsCache

if TYPE_CHECKING:
    import onnx

    from mcomp.compressors.quantize.options import QuantizeOptions
    from mcomp.stage import StageContext


def rewrite_for_int8(
    prepared: onnx.ModelProto,
    path: Path,
    options: QuantizeOptions,
    *,
    mode: str,
    excluded: set[str],
    ctx: StageContext,
    learned: bool = False,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The prepared model with the rewrites `options` ask for (saved over `path` when any
    was applied) and the report facts, `{"equalization": ..., "smoothquant": ...}`.

    `learned`: QAT ranges apply, which name the unrewritten tensors, so nothing is
    rewritten."""
    # auto equalizes only per-tensor weights: with per-channel weights it raised the int8
    # output error of the PP-OCR classifier (0.0328 -> 0.0387), per tensor it lowered it
    # (0.092 -> 0.051); docs/quantization.md
    wanted = options.equalization.enabled
    equalization = mode == "static" and (
        wanted is True or (wanted == "auto" and not options.per_channel)
    )
    # auto smooths dynamic int8 only: in static mode, on the test suite's MLP with outlier
    # units, it won on calibration output error yet left the accuracy budget unmet even
    # with the fallback (met without it); docs/quantization.md
    smooth_wanted = options.smoothquant.enabled
    smoothing = (mode == "static" and smooth_wanted is True) or (
        mode == "dynamic" and smooth_wanted is not False
    )
    if not (equalization or smoothing):
        return prepared, {}
    if learned:  # `auto` steps aside silently; an explicit `true` is told why
        if True in (options.equalization.enabled, options.smoothquant.enabled):
            ctx.progress.warn(
                "quantize: QAT ranges name the unrewritten tensors; equalization and "
                "SmoothQuant are off"
            )
        return prepared, {}
    scorer = Scorer(prepared, path.parent, options, mode=mode, excluded=excluded, ctx=ctx)
    facts: dict[str, Any] = {}
    current = prepared
    if equalization:
        start = time.perf_counter()
        current, facts["equalization"] = _equalization(current, options, scorer)
        facts["equalization"]["seconds"] = round(time.perf_counter() - start, 2)
    if smoothing:
        start = time.perf_counter()
        current, facts["smoothquant"] = _smoothquant(current, options, scorer, excluded)
        # the inserted Muls stay float (smoothquant.py); `excluded` is the stage's own set
        excluded |= set(facts["smoothquant"].pop("mul_nodes", []))
        facts["smoothquant"]["seconds"] = round(time.perf_counter() - start, 2)
    if current is not prepared:
        import onnx

        onnx.save(current, path)
    for scratch in path.parent.glob("rewrite.*.onnx"):
        scratch.unlink(missing_ok=True)
    return current, facts


class Scorer:
    """The int8 output error of candidate fp32 models, quantized as the stage will do."""

    def __init__(self, prepared, folder: Path, options, *, mode, excluded, ctx) -> None:
        self.folder, self.options, self.mode = folder, options, mode
        self.excluded, self.ctx = excluded, ctx
        self.prepared = prepared
        self._reference: tuple | None = None  # (feed, fp32 outputs), made on first use
        self.known: dict[int, float] = {}  # by id of the model scored

    def reference(self) -> tuple:
        if self._reference is None:
            names = [value.name for value in graph_inputs(self.prepared)]
            inputs = self.ctx.datasets.calibration.inputs
            feed = {name: inputs[name][:SCORING_SAMPLES] for name in names}
            outputs = float_outputs(self.prepared.SerializeToString(), feed, self.ctx.threads)
            self._reference = feed, outputs
        return self._reference

    def save(self, model, tag: str) -> PreparedModel:
        """`model` written to the scratch folder, with a statistics cache of its own."""
        import onnx

        path = self.folder / f"rewrite.{tag}.onnx"
        onnx.save(model, path)
        calibration = self.options.calibration
        cache = StatisticsCache(path, self.ctx, self.samples, calibration.percentile)
        return PreparedModel(path, cache)

    def statistics(self, model, names: set[str]):
        """Statistics of the tensors `names` of `model` on the calibration samples."""
        from mcomp.compressors.quantize.calibration_reader import CalibrationReader
        from mcomp.compressors.quantize.statistics import collect_statistics

        reader = CalibrationReader(self.ctx, model, self.samples)
        self.ctx.progress.finish()
        return collect_statistics(
            model,
            reader.all_inputs(),
            threads=self.ctx.threads,
            histograms=False,
            batch_size=self.ctx.batch_size,
            only=names,
        )

    @property
    def samples(self) -> int | None:
        return self.options.calibration.samples

    def error(self, model, tag: str, float_nodes: list[str] | None = None) -> float:
        if id(model) not in self.known:
            prepared = self.save(model, tag)
            quantized = quantize_once(
                prepared,
                self.folder / f"rewrite.{tag}.int8.onnx",
                self.options,
                mode=self.mode,
                excluded=self.excluded | set(float_nodes or []),
                ctx=self.ctx,
            )
            feed, reference = self.reference()
            error = relative_output_error(
                reference, quantized.model.SerializeToString(), feed, self.ctx.threads
            )
            self.known[id(model)] = float(error)
        return self.known[id(model)]


def copy_model(model):
    """A deep copy of an ONNX model (rewrites edit the graph in place)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _equalization(model, options: QuantizeOptions, scorer: Scorer):
    from mcomp.compressors.quantize.equalize import equalization_pairs, equalize

    settings = options.equalization
    if not equalization_pairs(model)[0]:
        return model, {"applied": False, "pairs": 0}
    ranges = settings.ranges
    stats = None
    if settings.high_bias_absorption or ranges == "activations":
        stats = scorer.save(model, "equalize-stats").statistics.get(histograms=False)
    candidate = copy_model(model)
    facts: dict[str, Any] = equalize(
        candidate,
        absorb_bias=settings.high_bias_absorption,
        stats=stats,
        activation_ranges=ranges == "activations",
    )
    facts["ranges"] = ranges
    if settings.enabled is True:
        return candidate, {"applied": True, **facts}
    scorer.ctx.progress.log("quantize: measuring cross-layer equalization")
    errors = {"off": scorer.error(model, "plain"), "on": scorer.error(candidate, "equalized")}
    applied = bool(errors["on"] < errors["off"])
    facts.update(applied=applied, output_error={k: round(v, 6) for k, v in errors.items()})
    return (candidate if applied else model), facts


def _smoothquant(model, options: QuantizeOptions, scorer: Scorer, excluded: set[str]):
    from mcomp.compressors.quantize.smoothquant import smooth, smoothing_groups

    settings = options.smoothquant
    ratio = settings.outlier_ratio if settings.enabled == "auto" else None
    groups = smoothing_groups(model, excluded)
    if not groups:
        return model, {"applied": False, "inputs": 0}
    stats = scorer.statistics(model, {group.tensor for group in groups})
    alphas = settings.alphas if settings.alpha == "auto" else [settings.alpha]
    candidates = {}
    for alpha in alphas:
        candidate = copy_model(model)
        facts = smooth(candidate, stats, alpha, excluded=excluded, outlier_ratio=ratio)
        if not facts["inputs"]:
            return model, {"applied": False, "inputs": 0}
        candidates[alpha] = (candidate, facts)
    if settings.enabled is True and len(candidates) == 1:
        candidate, facts = candidates[alphas[0]]
        return candidate, {"applied": True, **facts}
    scorer.ctx.progress.log("quantize: measuring SmoothQuant strengths")
    errors = {
        str(a): scorer.error(c, f"smooth{a}", f["mul_nodes"]) for a, (c, f) in candidates.items()
    }
    if settings.enabled == "auto":
        errors["off"] = scorer.error(model, "plain")
    best = min(errors, key=errors.get)
    rounded = {k: round(v, 6) for k, v in errors.items()}
    if best == "off":
        return model, {"applied": False, "output_error": rounded}
    candidate, facts = candidates[float(best)]
    return candidate, {"applied": True, **facts, "output_error": rounded}
