"""Atomic file writes and the one error type users see.

Every file fastnn writes (weights, history, figures, downloads) goes through `atomic_write`: the data
goes to a temporary file in the same folder, is flushed to disk, and only then renamed over the target.
A crash or Ctrl-C mid-write leaves either the old file or the new one, never half of one.
"""
import contextlib
import os
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)  # reading the umask means setting it: put it straight back


class FastnnError(Exception):
    """A problem the user can fix: the CLI prints its message as one line, without a traceback."""


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; rename it onto `path` when the block succeeds."""
    with atomic_writes([path], mode) as (f,):
        yield f


@contextlib.contextmanager
def atomic_writes(paths, mode="wb"):
    """atomic_write for files that belong together: yields one open file per path. Every file is written
    and flushed to disk before the first rename, and the renames follow one another, so only a crash in
    the microseconds between two renames leaves the set mixed (readers of such sets check for it)."""
    paths = [Path(p) for p in paths]
    files, temps = [], []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(tmp)
            files.append(os.fdopen(fd, mode))
        yield files
        for f, tmp in zip(files, temps):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give the usual permissions
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)  # atomic on POSIX and Windows when both are on one filesystem
    except BaseException:
        for f, tmp in zip(files, temps):
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
