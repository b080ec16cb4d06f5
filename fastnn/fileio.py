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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give the usual permissions
        os.replace(tmp, path)  # atomic on POSIX and Windows when both are on one filesystem
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
