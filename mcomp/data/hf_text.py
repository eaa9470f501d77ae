"""Unlabelled text as token ids for a Hugging Face model: a data split's factory.

    data:
      train:
        factory: mcomp.data.hf_text:tokenized_lines
        factory_args: {tokenizer: ./my-model, path: texts.txt, max_length: 128}
        inputs: [input_ids, attention_mask]
        labels: null

One sample per non-empty line of a UTF-8 text file, encoded with the tokenizer saved in a
local folder (`tokenizer.save_pretrained(folder)`; read offline, like the model: docs/hf.md),
padded and truncated to `max_length` so that every sample has the same shape. Paths are
relative to the recipe. Needs the `mcomp[hf]` extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcomp.errors import DataError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenized_lines(
    tokenizer: str, path: str, max_length: int = 128, samples: int | None = None
) -> list[dict[str, np.ndarray]]:
    """The lines of `path` as int64 arrays by input name, one dict per sample."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError("mcomp.data.hf_text needs transformers: pip install 'mcomp[hf]'") from None
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line][:samples]
    if not lines:
        raise DataError(f"{path} holds no line of text")
    encoder = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    encoded = encoder(
        lines, padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    arrays = {name: encoded[name].astype(np.int64) for name in INPUTS if name in encoded}
    return [{name: array[i] for name, array in arrays.items()} for i in range(len(lines))]
