"""Training stages on torch.distributed, launched by torchrun.

`torchrun --nproc_per_node N -m mcomp run recipe.yaml` starts N processes with RANK,
WORLD_SIZE and the rendezvous in the environment. Each process joins one process group (gloo
on CPU, NCCL on CUDA) with a timeout on every collective, so a rank that dies ends the run
instead of hanging it. Training stages run on every rank under DistributedDataParallel, each
rank reading its shard of the train split; the other stages and all measurement and writing
run on rank 0 while the others wait, and the result is broadcast from rank 0.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from mcomp.errors import MCompError


@dataclass
class DistContext:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """`value` from rank 0, on every rank."""
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def shard(self, order, length: int):
        """This rank's share of a permutation, padded by wrapping so every rank takes the same
        number of steps (ranks that stepped a different number of times would hang DDP)."""
        per_rank = -(-length // self.world_size)
        padded = order.repeat(-(-per_rank * self.world_size // length))[
            : per_rank * self.world_size
        ]
        return padded[self.rank :: self.world_size]


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str, timeout_s: int) -> DistContext | None:
    """Join the process group when torchrun started several processes; else None."""
    if not launched_by_torchrun():
        return None
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=backend,
    )


def resolve_device(choice: str) -> str:
    """`auto` means CUDA when torch sees a GPU; asking for CUDA without one is an error."""
    import torch

    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise MCompError(
            "runtime.device: cuda was asked for but torch sees no GPU "
            "(torch.cuda.is_available() is false); use `device: auto` or `cpu`"
        )
    if choice == "auto":
        return "cuda" if available else "cpu"
    return choice


def fingerprint(state) -> str:
    """A digest of a model's weights (torch) or bytes (ONNX), to check that ranks agree."""
    digest = hashlib.sha256()
    if state.module is not None:
        for name, tensor in sorted(state.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    else:
        digest.update(state.onnx_model.SerializeToString())
    return digest.hexdigest()[:16]


def evaluate_sharded(state, ctx) -> float:
    """The eval metric with each rank predicting a contiguous shard of the eval split; the
    outputs are gathered in rank order so every rank computes the same value."""
    from mcomp.measure.inference import predict_split

    split, dist = ctx.datasets.eval, ctx.dist
    bounds = np.linspace(0, len(split), dist.world_size + 1).astype(int)
    mine = split.subset(np.arange(bounds[dist.rank], bounds[dist.rank + 1]))
    outputs = (
        predict_split(state, mine, batch_size=ctx.batch_size, threads=ctx.threads)
        if len(mine)
        else None
    )
    parts = [p for p in dist.all_gather(outputs) if p is not None]
    return ctx.metric.fn(np.concatenate(parts), split.labels, ctx.reference_outputs)
