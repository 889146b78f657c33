"""The fsspec boundary: Datamon errors become the builtin OSError types, once, here."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from datamon.errors import (
    AccessDenied,
    AlreadyExists,
    AmbiguousId,
    ConfigError,
    DatamonError,
    DestinationNotEmpty,
    IntegrityError,
    InvalidArgument,
    InvalidName,
    NotFound,
    ObjectNotFound,
    RefConflict,
    StoreUnreachable,
    TransientStorageError,
    UnsafePath,
)

_ERRNO: list[tuple[type[DatamonError], int]] = [
    (NotFound, errno.ENOENT),
    (AccessDenied, errno.EACCES),
    (StoreUnreachable, errno.EHOSTUNREACH),
    (TransientStorageError, errno.ETIMEDOUT),
    (AlreadyExists, errno.EEXIST),
    (DestinationNotEmpty, errno.EEXIST),
    (RefConflict, errno.EBUSY),
    (AmbiguousId, errno.EINVAL),
    (InvalidName, errno.EINVAL),
    (InvalidArgument, errno.EINVAL),
    (UnsafePath, errno.EINVAL),
    (ConfigError, errno.EINVAL),
    # A missing object under a bundle that exists means a damaged store, not a missing file.
    (ObjectNotFound, errno.EIO),
    (IntegrityError, errno.EIO),
]


def to_oserror(exc: DatamonError, path: str = "") -> OSError:
    """The builtin OSError subclass (FileNotFoundError, PermissionError, ...) for ``exc``."""
    code = next((code for kind, code in _ERRNO if isinstance(exc, kind)), errno.EIO)
    # OSError(errno, ...) picks the subclass: ENOENT gives FileNotFoundError, and so on.
    if path:
        return OSError(code, str(exc), path)
    return OSError(code, str(exc))


@contextmanager
def translated(path: str = "") -> Iterator[None]:
    """Raise Datamon errors from the block as OSErrors naming ``path``; the cause is chained."""
    try:
        yield
    except DatamonError as exc:
        raise to_oserror(exc, path) from exc
