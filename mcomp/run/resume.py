"""The resume cache: each stage's model, facts and report entry, for `mcomp run --resume`.

Every run (`output.cache: true`, the default) saves what each stage leaves behind into
`<out>/.mcomp/cache/<key>.entry`, keyed as `mcomp.run.resume_keys` says; `--resume` reuses
the stages whose keys match, in order, and runs the rest. The cache holds the entries of the
latest run only (older ones are removed when a run ends), so it stays as large as one model
per stage.

A cached torch model is a pickled module (structured pruning and low-rank change its shape,
so a state_dict alone cannot rebuild it), and unpickling runs code. So every entry is signed
with HMAC-SHA256 under a secret key of the user's own (`~/.config/mcomp/cache-key`, mode
0600, made on first use, the scheme Jupyter uses to trust notebooks); an entry without a
valid signature (copied from another machine, written by someone else, tampered with) is
never unpickled: its stage runs again, with a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from pathlib import Path
from typing import Any

from mcomp.atomic import write_bytes_atomic
from mcomp.progress import Progress

MAGIC = b"MCOMPCACHE1\n"
KEY_FILE_ENV = "MCOMP_CACHE_KEY_FILE"


class StageCache:
    """This run's view of the cache: the keys of its stages, what to reuse and save."""

    def __init__(
        self, folder: Path, keys: list[str], secret: bytes, *, resume: bool, progress: Progress
    ) -> None:
        self.folder, self.keys, self.secret = folder, keys, secret
        self.resume, self.progress = resume, progress
        self.chain_intact = resume  # reuse only an unbroken prefix of stages

    def reuse(self, index: int, ctx) -> tuple[Any, dict] | None:
        """Stage `index`'s cached (model state, report entry), its facts put back into
        `ctx.facts`; None when it must run (no --resume, no entry, or a bad one)."""
        if not self.chain_intact:
            return None
        path = self._path(index)
        payload = self._load(path) if path.is_file() else None
        if payload is None:
            self.chain_intact = False
            return None
        from mcomp.stage import StageFacts

        ctx.facts = StageFacts(**payload["facts"])
        entry = dict(payload["entry"], resumed=True)
        entry["notes"] = [*entry["notes"], "reused from the resume cache (--resume)"]
        return _state_from(payload["state"]), entry

    def save(self, index: int, state, ctx, entry: dict) -> None:
        """Cache stage `index`'s result; a model that cannot be pickled is only warned about."""
        import torch

        payload = {
            "key": self.keys[index],
            "entry": entry,
            "state": _state_payload(state),
            "facts": {"masks": ctx.facts.masks, "qat_ranges": ctx.facts.qat_ranges},
        }
        buffer = io.BytesIO()
        try:
            torch.save(payload, buffer)
            body = buffer.getvalue()
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self._path(index), MAGIC + self._sign(body) + body)
        except Exception as exc:  # the cache is a convenience: the run goes on without it
            self.progress.warn(
                f"stage {index + 1}: not cached for --resume ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else ''})"
            )

    def reusable(self) -> int:
        """How many stages, from the first, have an entry (what --resume would reuse)."""
        count = 0
        while count < len(self.keys) and self._path(count).is_file():
            count += 1
        return count

    def prune(self) -> None:
        """Remove every entry that is not one of this run's stages."""
        wanted = {f"{key}.entry" for key in self.keys}
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.name not in wanted:
                    path.unlink(missing_ok=True)

    def _path(self, index: int) -> Path:
        return self.folder / f"{self.keys[index]}.entry"

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self.secret, body, hashlib.sha256).digest()

    def _load(self, path: Path) -> dict | None:
        import torch

        data = path.read_bytes()
        head, signature = data[: len(MAGIC)], data[len(MAGIC) : len(MAGIC) + 32]
        body = data[len(MAGIC) + 32 :]
        if head != MAGIC or not hmac.compare_digest(signature, self._sign(body)):
            self.progress.warn(
                f"resume: {path.name[:12]}… is not signed by this user's cache key "
                "(copied or written by someone else): not loaded, the stage runs again"
            )
            return None
        try:
            # safe: the signature proves this user's mcomp wrote the file (module docstring)
            payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
        except Exception as exc:
            self.progress.warn(f"resume: cannot read {path.name[:12]}… ({type(exc).__name__})")
            return None
        return payload if payload.get("key") == path.stem else None


def _state_payload(state) -> dict[str, Any]:
    return {
        "kind": str(state.kind),
        "inputs": [spec.model_dump(mode="json") for spec in state.inputs],
        "module": state.module,
        "onnx": None if state.onnx_model is None else state.onnx_model.SerializeToString(),
        # the stage's own ONNX form (cluster's index-coded graph) or the measured export
        "onnx_cache": None if state.onnx_cache is None else state.onnx_cache.SerializeToString(),
        "source": state.source,
        "extra": {k: v for k, v in state.extra.items() if not k.startswith("_")},
        "output": state.output,
    }


def _state_from(payload: dict[str, Any]):
    import onnx

    from mcomp.model.state import ModelKind, ModelState
    from mcomp.recipe.schema import InputSpec

    def proto(data: bytes | None):
        return None if data is None else onnx.load_from_string(data)

    return ModelState(
        kind=ModelKind(payload["kind"]),
        inputs=[InputSpec(**spec) for spec in payload["inputs"]],
        module=payload["module"],
        onnx_model=proto(payload["onnx"]),
        onnx_cache=proto(payload["onnx_cache"]),
        source=payload["source"],
        extra=payload["extra"],
        output=payload.get("output", 0),
    )


def cache_secret(progress: Progress) -> bytes | None:
    """This user's signing key, made on first use; None (cache off, a warning) if it cannot
    be read or made."""
    path = key_file()
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        progress.warn(f"resume cache off: cannot read its key {path} ({exc})")
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex() + "\n")
    except FileExistsError:  # another run made it a moment ago
        pass
    except OSError as exc:
        progress.warn(f"resume cache off: cannot create its key {path} ({exc.strerror})")
        return None
    return cache_secret(progress)


def key_file() -> Path:
    """$MCOMP_CACHE_KEY_FILE, else $XDG_CONFIG_HOME/mcomp/cache-key (~/.config/…)."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV])
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "mcomp" / "cache-key"
