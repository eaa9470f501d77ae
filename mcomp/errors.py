"""Typed errors, each for one purpose, caught once at the CLI boundary.

Every error that is the user's to fix (bad recipe, missing file, data that does not fit the
model) derives from `MCompError` and carries exit code 2. Messages name the file, the recipe
key (and line), the bad value and what to do, in one line.
"""

from __future__ import annotations


class MCompError(Exception):
    """Base of all errors the user can fix; rendered as one line, exit code 2."""

    exit_code = 2


class RecipeError(MCompError):
    """The recipe is malformed: YAML syntax, unknown key, wrong type, impossible stage order."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file, self.key, self.line, self.column = file, key, line, column
        where = file or "recipe"
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        prefix = f"{where}: " + (f"{key}: " if key else "")
        super().__init__(prefix + message)


class ModelLoadError(MCompError):
    """The model file is missing, corrupt, of an unknown format, or refused (pickle)."""


class DataError(MCompError):
    """A data split is missing, malformed, or does not fit the model's inputs."""


class MetricError(MCompError):
    """A user's metric function failed or returned something that is not a number."""


class StageError(MCompError):
    """A stage could not do its work on this model (e.g. an op that cannot be quantized)."""


class NonFiniteError(StageError):
    """A model's outputs (or a training loss) became NaN or Inf."""


class ParityError(StageError):
    """The exported ONNX model's outputs differ from torch's beyond the tolerance."""


class OutputError(MCompError):
    """An output path cannot be written (e.g. the output directory is a file)."""


class ReportError(MCompError):
    """A saved report cannot be read, or is not an mcomp report (`mcomp report`)."""


class ConditionError(MCompError):
    """A `mcomp report --fail-on` condition is malformed or cannot be checked on the reports."""


class DependencyError(MCompError):
    """An optional dependency (an extra such as `mcomp[plot]`) is not installed."""
