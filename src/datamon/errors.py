"""The one exception tree of Datamon.

Every error Datamon raises derives from :class:`DatamonError`; foreign errors
(OS, obstore, msgspec, zstd) are translated once, in the adapter that meets them.

::

    DatamonError
    ├── ConfigError
    ├── StorageError
    │   ├── ObjectNotFound (also KeyError)
    │   ├── TransientStorageError          retried by RetryingBackend
    │   ├── StoreUnreachable
    │   ├── AccessDenied
    │   ├── ConditionalWritesUnsupported
    │   └── RefConflict
    ├── IntegrityError
    │   ├── ChecksumMismatch
    │   ├── CorruptObject
    │   └── UnsupportedFormat
    ├── NotFound (also LookupError)
    │   ├── RepoNotFound
    │   ├── BundleNotFound
    │   ├── LabelNotFound
    │   ├── BranchNotFound
    │   ├── PathNotInBundle
    │   └── RunNotFound
    ├── AmbiguousId
    ├── AlreadyExists
    │   ├── RepoExists
    │   └── BranchExists
    ├── DestinationNotEmpty
    ├── SourceUnreadable
    ├── UnsafePath
    ├── InvalidName
    ├── InvalidArgument
    └── PipelineError
        ├── TaskDefinitionError
        │   └── ParameterError
        └── DependencyCycle
"""

from __future__ import annotations

from collections.abc import Sequence


class DatamonError(Exception):
    """Root of every error Datamon raises."""


class ConfigError(DatamonError):
    """The configuration is missing, unreadable or invalid."""


class StorageError(DatamonError):
    """A backend operation failed."""


class ObjectNotFound(StorageError, KeyError):
    """A key does not exist in the backend."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"object not found: {self.key}"


class PackMissing(ObjectNotFound):
    """A pack a bundle names has no index in the blob location."""

    def __init__(self, key: str, pack: str) -> None:
        super().__init__(key)
        self.pack = pack

    def __str__(self) -> str:
        return (
            f"pack {self.pack} has no index in the store's blob location ({self.key}):"
            " the blob location given may not be this store's, or the pack was removed"
        )


class TransientStorageError(StorageError):
    """A failure that may succeed if tried again (timeouts, throttling, 5xx)."""


class StoreUnreachable(StorageError):
    """The store cannot be reached at all."""


class AccessDenied(StorageError):
    """The store refused the credentials or the operation."""


class ConditionalWritesUnsupported(StorageError):
    """The bucket accepted a conditional write it should have refused."""


class RefConflict(StorageError):
    """A compare-and-swap found another version than the one expected."""

    def __init__(self, name: str, expected: str | None, actual: str | None = None) -> None:
        super().__init__(name, expected, actual)
        self.name = name
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        expected = self.expected or "nothing"
        actual = self.actual or "nothing"
        return f"{self.name} changed concurrently (expected {expected}, found {actual})"


class IntegrityError(DatamonError):
    """Stored data does not match what its name or header promises."""


class ChecksumMismatch(IntegrityError):
    """An object's content does not hash to its id."""

    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(key, expected, actual)
        self.key = key
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return f"corrupted object {self.key}: expected hash {self.expected}, got {self.actual}"


class CorruptObject(IntegrityError):
    """An object cannot be decoded."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"corrupted object {self.key}: {self.reason}"


class UnsupportedFormat(IntegrityError):
    """An object was written in a format version this reader does not know."""

    def __init__(self, what: str, version: object) -> None:
        super().__init__(what, version)
        self.what = what
        self.version = version

    def __str__(self) -> str:
        return f"{self.what} uses format version {self.version!r}, which this Datamon cannot read"


class NotFound(DatamonError, LookupError):
    """A named thing does not exist."""

    kind = "object"

    def __init__(self, name: str, where: str = "") -> None:
        super().__init__(name, where)
        self.name = name
        self.where = where

    def __str__(self) -> str:
        suffix = f" in {self.where}" if self.where else ""
        return f"{self.kind} not found: {self.name}{suffix}"


class RepoNotFound(NotFound):
    kind = "repo"


class StoreNotFound(NotFound):
    """No Datamon store at a location a command only reads."""

    kind = "store"

    def __str__(self) -> str:
        return f"no Datamon store at {self.name} (`datamon repo create` makes one)"


class BundleNotFound(NotFound):
    kind = "bundle"


class LabelNotFound(NotFound):
    kind = "label"


class BranchNotFound(NotFound):
    kind = "branch"


class PathNotInBundle(NotFound):
    kind = "file"


class AmbiguousId(DatamonError):
    """A bundle id prefix matches more than one bundle."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        super().__init__(prefix, tuple(candidates))
        self.prefix = prefix
        self.candidates = tuple(candidates)

    def __str__(self) -> str:
        shown = ", ".join(self.candidates[:5])
        more = "" if len(self.candidates) <= 5 else ", ..."
        return f"bundle id prefix {self.prefix!r} is ambiguous: {shown}{more}"


class AlreadyExists(DatamonError):
    kind = "object"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"{self.kind} already exists: {self.name}"


class RepoExists(AlreadyExists):
    kind = "repo"


class BranchExists(AlreadyExists):
    kind = "branch"


class DestinationNotEmpty(DatamonError):
    """Something is where a download would write; ``hint`` says what to do about it."""

    def __init__(self, path: str, hint: str = "") -> None:
        super().__init__(path, hint)
        self.path = path
        self.hint = hint

    def __str__(self) -> str:
        return f"destination is not empty: {self.path}" + (f" ({self.hint})" if self.hint else "")


class LocalStateError(DatamonError):
    """A file of local state (the chunk index, the stat cache) cannot be opened or written."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"cannot use the local cache {self.path}: {self.reason} (check its permissions, "
            "or set DATAMON_CACHE_DIR to a folder of your own)"
        )


class CommitAborted(DatamonError):
    """A commit block ended without committing, because one inside it raised."""


class DestinationBusy(DatamonError):
    """Another download or update is writing into the folder."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def __str__(self) -> str:
        return f"another download or update is writing into {self.path}"


class SourceUnreadable(DatamonError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read {self.path}: {self.reason}"


class UnsafePath(DatamonError):
    """A bundle entry would be written outside the destination."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"refusing unsafe path {self.path!r}: {self.reason}"


class InvalidName(DatamonError):
    def __init__(self, kind: str, name: str, reason: str) -> None:
        super().__init__(kind, name, reason)
        self.kind = kind
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid {self.kind} name {self.name!r}: {self.reason}"


class InvalidArgument(DatamonError):
    """A value given by the caller cannot be used (a bad pattern, say)."""


# pipelines -----------------------------------------------------------------------------------


class RunNotFound(NotFound):
    kind = "run"


class PipelineError(DatamonError):
    """A pipeline cannot be planned or run as defined."""


class TaskDefinitionError(PipelineError):
    """A task class or instance is malformed (no output, not importable, bad requires)."""


class ParameterError(TaskDefinitionError):
    """A task parameter is missing, unknown, of the wrong type or not JSON-serialisable."""

    def __init__(self, task: str, name: str, reason: str) -> None:
        super().__init__(task, name, reason)
        self.task = task
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"parameter {self.name!r} of {self.task}: {self.reason}"


class DependencyCycle(PipelineError):
    """Tasks require each other in a loop; ``cycle`` names them, first repeated last."""

    def __init__(self, cycle: Sequence[str]) -> None:
        super().__init__(tuple(cycle))
        self.cycle = tuple(cycle)

    def __str__(self) -> str:
        return "dependency cycle: " + " -> ".join(self.cycle)
