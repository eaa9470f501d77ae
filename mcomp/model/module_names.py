"""Module names as users write them in patterns, without wrapper prefixes."""

from __future__ import annotations

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def strip_wrapper_prefix(name: str) -> str:
    """`module.conv1` (DDP) and `_orig_mod.conv1` (torch.compile) both become `conv1`."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name
