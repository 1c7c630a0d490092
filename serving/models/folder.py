"""A model folder built beside its destination and renamed into place once complete.

Every builder (serving/models/default.py, and the test suite's tiny model) writes
into a temporary folder next to its destination, puts a marker file inside last,
and renames the folder into place, so a reader never sees half a model. A
destination whose marker matches what the caller expects is returned at once: one
small JSON read, no torch or transformers import. Builds of one destination are
serialised across processes by an advisory lock (flock), so several replicas
starting together build once; the lock dies with its holder, so a killed build
never blocks the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "FORMAT_VERSION",
    "MARKER_FILE",
    "ModelBuildError",
    "Progress",
    "build_lock",
    "marker_matches",
    "publish",
    "read_marker",
    "remove_stale_temps",
    "silent",
    "write_json",
]

Progress = Callable[[str], None]

#: Name of the file that marks a finished build; written last, inside the folder.
MARKER_FILE = ".cacheroute-complete"
#: Bumped whenever the produced folder changes, so that older builds are redone.
FORMAT_VERSION = 1


class ModelBuildError(RuntimeError):
    """A model folder could not be built; the message is one line, meant for users."""


def silent(_: str) -> None:
    pass


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def marker_matches(folder: Path, expected: dict[str, Any]) -> bool:
    marker = read_marker(folder)
    return marker is not None and all(marker.get(k) == v for k, v in expected.items())


@contextlib.contextmanager
def build_lock(target: Path, report: Progress) -> Iterator[None]:
    """Serialise builds of one target across processes on this host.

    Several replicas starting together would otherwise each spend half a minute
    and 400 MB of disk building the same folder. The lock is advisory (flock) and
    dies with its holder, so a killed build never blocks the next one.
    """
    import fcntl

    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"waiting for another process building {target.name}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_temps(target: Path) -> None:
    """Delete temp folders left by builds that were killed; only called under the lock."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def publish(built: Path, target: Path, *, replace_foreign: bool) -> None:
    """Move a finished folder into place with renames, so readers never see half of it."""
    # safetensors writes its file 0600; a shared model cache must be readable by
    # every engine process, whichever user it runs as.
    for path in built.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    built.chmod(0o755)
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():
        if not replace_foreign and read_marker(target) is None:
            raise ModelBuildError(f"{target} appeared while building and is not a cacheroute model")
        # An outdated or foreign build: move it aside first (rename is atomic),
        # then delete it once the new folder is in place.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "model")
        os.rename(built, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(built, target)


def write_json(path: Path, data: dict[str, Any]) -> None:
    # Sorted keys and a fixed layout: the files are part of the deterministic output.
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")

