"""Threads and seeds, set deliberately: on small CPUs oversubscription costs 10-50x."""

from __future__ import annotations

import contextlib
import os
import random

from mcomp.recipe.schema import MAX_THREADS, RuntimeSpec

MAX_AUTO_THREADS = 8


def resolve_threads(spec: RuntimeSpec, override: int | None = None) -> int:
    """Threads from --threads, else MCOMP_THREADS, else the recipe; auto = CPU count (≤ 8)."""
    if override:
        return override
    env = os.environ.get("MCOMP_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        if int(env) > MAX_THREADS:
            from mcomp.errors import MCompError

            raise MCompError(f"MCOMP_THREADS={env}: use 1 to {MAX_THREADS} threads")
        return int(env)
    if spec.threads == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_THREADS))
    return int(spec.threads)


def apply_threads(threads: int) -> None:
    """Give torch exactly `threads` intra-op threads and one inter-op thread."""
    import torch

    torch.set_num_threads(threads)
    # It can only be set before the first parallel work; later calls keep the first value.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that the same recipe gives the same report."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
