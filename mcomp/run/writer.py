"""Everything a run writes, opened before its first stage and written as one unit at its end:
the output folder (`mcomp.run.outputs`), `--report` and `--summary-md` destinations
(`mcomp.run.destinations`) and the resume cache (`mcomp.run.resume`).

An interruption anywhere in the run is told what it leaves behind (`say_outcome`), so the
CLI's message is true; a write that fails (a full disk) is one OutputError line, with
nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mcomp.errors import OutputError
from mcomp.interrupt import Terminated, deferred_signals, emergency_cleanup, say_outcome
from mcomp.progress import Progress
from mcomp.recipe.load import LoadedRecipe
from mcomp.run.destinations import Destination
from mcomp.run.outputs import OutputFolder
from mcomp.run.resume import StageCache

MIB = 1 << 20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file size limit (ulimit -f)


@dataclass
class RunWriter:
    """The destinations of one run (`folder` is None on torchrun's follower ranks)."""

    folder: OutputFolder | None
    scratch_dir: Path
    progress: Progress
    report: Destination | None = None
    summary: Destination | None = None
    cache: StageCache | None = None  # once the stages' keys are known
    command: list[str] | None = None  # the command line, for provenance.json
    extras: list[Destination] = field(default_factory=list)

    def reusable(self) -> int:
        """How many of this run's stages `--resume` would reuse now."""
        return self.cache.reusable() if self.cache is not None else 0

    def stage_cache(self, loaded: LoadedRecipe, ctx, *, resume: bool):
        """The resume cache for this run's stages (None: caching is off or impossible)."""
        from mcomp.run.resume import cache_secret
        from mcomp.run.resume_keys import base_key, stage_keys

        if self.folder is None or ctx.dist is not None or not loaded.recipe.output.cache:
            if resume:
                why = "output.cache is false" if self.folder else "under torchrun"
                self.progress.warn(f"--resume: no resume cache ({why}); every stage runs")
            return None
        secret = cache_secret(self.progress)
        if secret is None:
            return None
        keys = stage_keys(loaded, ctx, base_key(loaded, ctx))
        self.cache = StageCache(
            self.folder.cache_dir, keys, secret, resume=resume, progress=self.progress
        )
        return self.cache

    def check_space(self, model_bytes: int, *, copies: int, cached_stages: int) -> None:
        """Fail before the first stage when the folder cannot hold the outputs; warn when
        the cache and scratch files may not fit (`model_bytes`: the fp32 model's size)."""
        if self.folder is None:
            return
        free = shutil.disk_usage(self.folder.path).free
        needed = model_bytes * copies + MIB
        if free < needed:
            raise OutputError(
                f"output.dir: {self.folder.path} has {free // MIB} MiB free, the outputs "
                f"need about {needed // MIB} MiB; free some space or choose another --out"
            )
        with_cache = needed + model_bytes * (2 * cached_stages + 3)
        if free < with_cache:
            self.progress.warn(
                f"{self.folder.path}: {free // MIB} MiB free; with the resume cache and the "
                f"scratch files this run may need {with_cache // MIB} MiB (output.cache: false "
                "saves most of it)"
            )

    def write(self, files: dict[str, bytes], *, report: bytes, summary: bytes) -> None:
        """Write the set and the extra destinations; renames last, signals held meanwhile."""
        from mcomp.run import destinations as dest
        from mcomp.run.commit import commit_outputs

        payload = {"--report": report, "--summary-md": summary}
        for extra in self.extras:
            if extra.kind == "set":
                files[extra.target.as_posix()] = payload[extra.option]
        files_out = [e for e in self.extras if e.kind == "file"]
        try:
            for extra in files_out:
                dest.stage_file(extra, payload[extra.option])
            commit_outputs(self.folder, files)
        except OSError as exc:
            raise OutputError(
                f"output.dir: cannot write the outputs to {self.folder.path}: "
                f"{exc.strerror or exc}; {self.folder.outcome(self.reusable())}"
            ) from None
        finally:
            if not self.folder.committed:
                for extra in files_out:
                    dest.discard_staged(extra)
        try:
            with deferred_signals():
                for extra in files_out:
                    dest.place_file(extra)
            for extra in self.extras:
                if extra.kind == "stream":
                    dest.write_stream(extra, payload[extra.option])
        except (OSError, OutputError) as exc:
            raise OutputError(f"{exc}; the outputs in {self.folder.path} were written") from None


@contextlib.contextmanager
def open_run_writer(
    loaded: LoadedRecipe, options, out: Path, progress: Progress
) -> Iterator[RunWriter]:
    """Check, lock and clean every destination before any work; clean up after the run."""
    from mcomp.run.outputs import open_output_folder

    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 writes
        scratch = Path(tempfile.mkdtemp(prefix="mcomp-"))
        try:
            yield RunWriter(None, scratch, progress)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    output = loaded.recipe.output
    folder = open_output_folder(
        out, replace=str(output.replace), wait=options.wait, progress=progress
    )
    writer = RunWriter(folder, folder.scratch_dir, progress, command=options.command)

    def stuck() -> str:  # SIGTERM while the main thread is stuck in a library call
        if not folder.committed:
            shutil.rmtree(folder.sibling("next"), ignore_errors=True)
        folder.tidy()
        return folder.outcome(writer.reusable())

    try:
        writer.extras = _plan_extras(options, out, output)
        folder.scratch_dir.mkdir(exist_ok=True)
        with emergency_cleanup(stuck):
            yield writer
    except (KeyboardInterrupt, Terminated) as exc:
        say_outcome(exc, folder.outcome(writer.reusable()))
        raise
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        # a stage's scratch files (in the output folder) or a library's own temp files
        where = exc.filename or f"the scratch files in {folder.scratch_dir}"
        raise OutputError(
            f"output.dir: {exc.strerror} while the run wrote {where}; "
            f"{folder.outcome(writer.reusable())}; free some space or choose another --out"
        ) from None
    finally:
        if writer.cache is not None:
            writer.cache.prune()
        folder.close()


def _plan_extras(options, out: Path, output) -> list[Destination]:
    from mcomp.run.destinations import plan_destination

    own = {output.model, "report.json", "recipe.resolved.yaml", "provenance.json"}
    own |= {name for name in (output.torch_model, output.baseline) if name is not None}
    own.add("mcomp-manifest.json")
    extras = []
    for option, path in (("--report", options.report_file), ("--summary-md", options.summary_md)):
        if path is not None:
            # --report into the folder's own report.json is the same bytes: allowed
            taken = own - {"report.json"} if option == "--report" else own
            extras.append(plan_destination(option, Path(path), out, taken))
    return extras
