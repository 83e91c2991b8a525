"""Writing files so that a killed or failed run never leaves half of one, and one owner per run directory.

Every artefact speechkit writes (feature caches, manifests, prepare.json, bricks, tokenizers,
calibration tables, hypotheses) goes through ``atomic_write`` (one file) or ``atomic_dir`` (a
directory such as a brick): the content is written under a temporary name beside the target and
renamed into place only when complete, so a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import SpeechkitError

MODE = 0o644  # what a plain open() gives under the usual umask; mkstemp's 0600 would hide shared files
ROOTS = {"data": "SPEECHKIT_DATA", "exp": "SPEECHKIT_EXP"}  # a relative path's first part → its root


def rooted(path):
    """``path`` as speechkit reads it: a relative path whose first part is ``data`` or ``exp``
    (``data/locale``, ``exp/locale/demo/brick``) lies under the data / experiment root, ``$SPEECHKIT_DATA`` /
    ``$SPEECHKIT_EXP`` (``speechkit --data-root DIR`` / ``--exp-root DIR`` set them); with a root unset,
    ``./data`` / ``./exp``: the path as it is. Anything else (other paths, absolute paths, values that are
    not strings) is returned unchanged. Command-line paths, config values and recipe variables all go
    through it."""
    if not isinstance(path, str):
        return path
    head, _, rest = path.partition("/")
    root = os.environ.get(ROOTS.get(head, ""), "")
    return os.path.join(root, rest) if root else path


def _tmp_name(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same file extension, for writers that look at it) that becomes
    ``path`` when the block ends without an error; on an error it is removed and ``path`` is untouched
    (as it is when the block removes the temporary path itself: nothing to replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, path.suffix)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, MODE)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """``open(path, mode)`` that writes a temporary file and renames it to ``path`` on success."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``path`` that replaces ``path`` (a directory) when the block
    ends without an error; on an error it is removed and an existing ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        for f in tmp.rglob("*"):  # some writers (mkstemp-based ones) leave 0600: a shared brick is readable
            os.chmod(f, 0o755 if f.is_dir() else MODE)
        if path.exists():  # a directory cannot be replaced in one rename: move it aside first
            old = _tmp_name(path, ".old")
            old.unlink()
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class RunLockError(SpeechkitError):
    """A run directory is in use by another run (the message names the holder)."""


class RunLock:
    """One owner per run directory: ``<directory>/.speechkit-lock`` holds the owner's pid, host, start
    time and command. A second owner is refused with a message naming the holder; a lock whose process
    is gone (same host) is taken over with a note. Use as a context manager (released on exit)."""

    NAME = ".speechkit-lock"

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / self.NAME
        self.held = False

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, MODE)
            except FileExistsError:
                self._check_holder(me["host"])
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunLockError(f"{self.path}: cannot take the lock (another run took it just now)")

    def _check_holder(self, host: str) -> None:
        """Refuse when the holder lives (or may: another host); remove a stale lock."""
        try:
            holder = json.loads(self.path.read_text())
            pid, where, since = int(holder["pid"]), holder["host"], holder.get("started", "?")
        except (OSError, ValueError, KeyError, TypeError):  # empty or torn: its writer died while writing
            pid, where, since = None, host, "?"
        if pid is not None and (where != host or _alive(pid)):
            raise RunLockError(
                f"{self.path.parent} is in use by pid {pid} on {where} since {since} "
                f"({holder.get('command', '?')[:80]}); wait for it or choose another directory "
                f"(remove {self.path} if that run is gone)")
        print(f"note: taking over the stale lock {self.path} (pid {pid} on {where}, since {since}, is gone)",
              file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
