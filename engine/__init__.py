"""mcomp: model compression from a YAML recipe.

The root package holds the engine: recipe schema and loading, the pipeline, model and data
I/O, measurement and the report. The command line lives in `mcomp.cli`, the stages in
`mcomp.compressors`. Nothing here imports torch or onnxruntime at import time, so
`mcomp --help` and `mcomp validate` start fast.
"""

__version__ = "0.1.0"
