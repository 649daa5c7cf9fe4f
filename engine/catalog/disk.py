"""Disk faults as clear errors: a cache or store folder that cannot be written (read-only, full,
not a folder) fails the one operation that needed it with a message naming the path, and the rest
of the server keeps serving what it already has."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CacheDirError(OSError):
    """`what` at `path` cannot be written; the message says why and what to change."""

    def __init__(self, what: str, path: Path, cause: OSError) -> None:
        reason = _REASONS.get(cause.errno or 0, cause.strerror or str(cause))
        super().__init__(
            cause.errno,
            f"cannot write {what} at {path}: {reason} ({cause.filename or path}); free space there, "
            "fix its permissions, or point cache_dir (models.yaml) or $HEARTH_CACHE_DIR elsewhere",
        )
        self.path = path

    def __str__(self) -> str:
        return str(self.args[1])


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EEXIST: "a file is in the way of the folder",
}


@contextmanager
def cache_errors(what: str, path: Path) -> Iterator[None]:
    """Turn an `OSError` of writing (a full, read-only or blocked disk) raised while writing `what` under
    `path` into a `CacheDirError`; any other error (e.g. a missing source file) passes unchanged."""
    try:
        yield
    except CacheDirError:
        raise
    except OSError as e:
        if e.errno not in _REASONS:
            raise
        raise CacheDirError(what, path, e) from e
