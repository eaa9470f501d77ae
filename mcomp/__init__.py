"""mcomp: model compression from a YAML recipe.

The core package, in subpackages by job: `recipe` (schema, loading, validation), `run` (the
pipeline), `model` and `data` (loading), `measure`, `report`, `training` and `tools` (the
cores of the companion commands). The root keeps what everything uses: errors, the progress
protocol, the stage contract, atomic writes. The command line lives in `mcomp.cli`, the
stages in `mcomp.compressors`. Nothing here imports torch or onnxruntime at import time, so
`mcomp --help` and `mcomp validate` start fast.
"""

__version__ = "0.1.0"
