"""ObjectStoreBackend: S3, GCS and Azure buckets through ``obstore``.

Every obstore exception is translated here, once, into Datamon's error tree with
a one-line message: obstore's own messages carry the response body and a
multi-line Rust debug dump, which are noise to a user.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlparse

import obstore
import obstore.exceptions as obx
from obstore.store import GCSStore, from_url

from datamon.errors import (
    AccessDenied,
    ConditionalWritesUnsupported,
    ConfigError,
    ObjectNotFound,
    RefConflict,
    StorageError,
    StoreUnreachable,
    TransientStorageError,
)
from datamon.storage.base import ObjectInfo, Payload, check_key, check_prefix

if TYPE_CHECKING:
    from obstore import ObjectMeta, PutMode, PutResult
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

# Options that configure the HTTP client rather than the store itself.
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_ca_certificate",
        "proxy_excludes",
        "proxy_url",
        "randomize_addresses",
        "read_timeout",
        "root_certificate",
        "timeout",
        "user_agent",
    }
)

# obstore's defaults retry for three minutes; a store that cannot be reached must
# be reported within seconds instead (RetryingBackend adds its own retries on top). A
# request may take as long as its bytes need (a 16 MiB pack over an uplink of 4 Mbit/s
# took over 60 s, which a whole-request limit of 60 s failed every time); a stalled one is
# caught by the read timeout, which runs while a reply is awaited or read.
DEFAULT_CLIENT: dict[str, str] = {
    "connect_timeout": "4s",
    "read_timeout": "60s",
    "timeout": "3600s",
}
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_TIMEOUT = 10.0

# NotFoundError is deprecated (obstore raises FileNotFoundError) but still exported.
_NOT_FOUND = (FileNotFoundError, obx.NotFoundError)
_OBSTORE_ERRORS = (obx.BaseError, FileNotFoundError, ValueError)

_STATUS = re.compile(r"status code: (\d{3})(?: ([A-Za-z -]{1,40}))?")
_XML_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")
_ENDPOINT = re.compile(r"Error performing [A-Z]+ (\w+://[^/\s?]+)")
_NO_BUCKET_CODES = ("NoSuchBucket", "ContainerNotFound")
_MAX_MESSAGE = 240


def _status(exc: BaseException) -> int | None:
    match = _STATUS.search(str(exc))
    return int(match.group(1)) if match else None


def _summary(exc: BaseException) -> str:
    """One line saying what went wrong, without the body dump and debug output."""
    text = str(exc)
    head = text.split("\n\nDebug source:", 1)[0]
    status = _status(exc)
    if status is not None:
        parts = [f"HTTP {status}"]
        if (reason := _STATUS.search(head)) and reason.group(2):
            parts.append(reason.group(2))
        if code := _XML_CODE.search(head):
            parts.append(code.group(1))
        line = " ".join(parts)
        if message := _XML_MESSAGE.search(head):
            line += f": {message.group(1)}"
        return line
    line = head.strip().splitlines()[0] if head.strip() else type(exc).__name__
    # "Generic S3 error: Error performing GET <url> in 3ms, after 2 retries, ... - <reason>"
    line = re.sub(r"^Generic \w+ error: ", "", line)
    line = re.sub(r"^Error performing .*? - ", "", line)
    return line[:_MAX_MESSAGE]


def _connection_problem(exc: BaseException) -> str | None:
    """Why the connection failed, if the error is one; None for other errors."""
    text = str(exc)
    if _status(exc) is not None:
        return None
    if "dns error" in text:
        return "DNS lookup failed"
    if "ConnectionRefused" in text or "Connection refused" in text:
        return "connection refused"
    if "kind: Timeout" in text or "timed out" in text:
        return "timed out"
    if "kind: Connect" in text:
        return "connection failed"
    return None


def _no_bucket(exc: BaseException) -> bool:
    """Whether the store answered that the bucket (or container) does not exist: the error
    code of its reply, not any text of the error (which holds the request's URL)."""
    code = _XML_CODE.search(str(exc))
    return code is not None and code.group(1) in _NO_BUCKET_CODES


def _split_options(
    scheme: str, options: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str], RetryConfig]:
    config: dict[str, str] = {}
    client: dict[str, str] = dict(DEFAULT_CLIENT)
    max_retries, retry_timeout = DEFAULT_MAX_RETRIES, DEFAULT_RETRY_TIMEOUT
    for key, value in options.items():
        value = str(value)
        if key in CLIENT_KEYS:
            client[key] = value
        elif key == "max_retries":
            max_retries = int(_parse_number(key, value))
        elif key == "retry_timeout":
            retry_timeout = _parse_number(key, value)
        elif key == "endpoint" and scheme == "gs":
            config["base_url"] = value
        else:
            config[key] = value
    endpoint = config.get("endpoint") or config.get("base_url") or ""
    if endpoint.startswith("http://") and "allow_http" not in options:
        # Naming a plain-http endpoint is already the explicit opt-in.
        client["allow_http"] = "true"
    retry: RetryConfig = {
        "max_retries": max_retries,
        "retry_timeout": timedelta(seconds=retry_timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2,
        },
    }
    return config, client, retry


def _parse_number(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"store option {key} must be a number, not {value!r}") from None
    if number < 0:
        raise ConfigError(f"store option {key} must not be negative")
    return number


class ObjectStoreBackend:
    """A bucket (and optional key prefix) in S3, Google Cloud Storage or Azure Blob."""

    def __init__(
        self, store: ObjectStore, location: str, conditional: ObjectStore | None = None
    ) -> None:
        self._store = store
        # Conditional writes go through a client that does not retry: a retried one that
        # meets its own first attempt (landed, its reply lost) must be told apart from
        # another writer's, which only RetryingBackend, counting its attempts, can do.
        self._conditional = conditional or store
        self._location = location
        # GCS guards conditional writes with the object generation, the others with the ETag.
        self._version_field: Literal["e_tag", "version"] = (
            "version" if isinstance(store, GCSStore) else "e_tag"
        )

    @classmethod
    def from_url(cls, location: str, options: Mapping[str, str]) -> ObjectStoreBackend:
        scheme = urlparse(location).scheme.lower()
        if "#" in location or "?" in location:
            # A URL ends its path there: s3://b/team#1 would be the store at s3://b/team.
            raise ConfigError(f"store location {location!r}: '#' and '?' cannot be in a prefix")
        config, client_options, retry = _split_options(scheme, options)
        once: RetryConfig = {**retry, "max_retries": 0}

        def client(retries: RetryConfig) -> ObjectStore:
            return from_url(
                location,
                config=cast(Any, config),
                client_options=cast("ClientConfig", client_options),
                retry_config=retries,
            )

        try:
            store, conditional = client(retry), client(once)
        except obx.UnknownConfigurationKeyError as exc:
            raise ConfigError(f"invalid option for {location}: {_summary(exc)}") from None
        except (*_OBSTORE_ERRORS, TypeError) as exc:
            raise ConfigError(f"cannot open {location}: {_summary(exc)}") from None
        return cls(store, location, conditional)

    @property
    def url(self) -> str:
        return self._location

    @property
    def bucket(self) -> str:
        config = cast(Mapping[str, object], getattr(self._store, "config", None) or {})
        return str(config.get("bucket") or config.get("container_name") or "")

    @property
    def prefix(self) -> str:
        prefix = getattr(self._store, "prefix", None)
        return str(prefix or "").strip("/")

    def _translate(self, exc: BaseException, key: str, *, key_lookup: bool = True) -> StorageError:
        """The Datamon error for ``exc``; a 404 means a missing key only when ``key_lookup``."""
        summary = _summary(exc)
        match = _ENDPOINT.search(str(exc))
        endpoint = match.group(1) if match else self._location
        if _no_bucket(exc):
            return StoreUnreachable(f"bucket {self.bucket!r} does not exist at {endpoint}")
        if isinstance(exc, _NOT_FOUND) and key_lookup:
            return ObjectNotFound(key)
        if isinstance(exc, obx.PermissionDeniedError | obx.UnauthenticatedError):
            return AccessDenied(f"access denied to {key} in {self._location}: {summary}")
        status = _status(exc)
        if status in (401, 403):
            return AccessDenied(f"access denied to {key} in {self._location}: {summary}")
        if status is not None and (status in (408, 429) or status >= 500):
            return TransientStorageError(f"{key} in {self._location}: {summary}")
        if reason := _connection_problem(exc):
            return StoreUnreachable(f"cannot reach {endpoint} for {self._location}: {reason}")
        if isinstance(exc, obx.GenericError) and status is None and "HTTP error" in str(exc):
            return TransientStorageError(f"{key} in {self._location}: {summary}")
        return StorageError(f"{key} in {self._location}: {summary}")

    def _version_of(self, meta: ObjectMeta | PutResult) -> str:
        other = "version" if self._version_field == "e_tag" else "e_tag"
        return str(meta.get(self._version_field) or meta.get(other) or "")

    def get(self, key: str) -> bytes:
        return self.get_versioned(key)[0]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return bytes(self.get_range_view(key, start, length))

    def get_range_view(self, key: str, start: int, length: int) -> memoryview:
        check_key(key)
        if start < 0 or length < 0:
            raise StorageError(f"invalid range {start}+{length} for {key}")
        if length == 0:
            self.stat(key)
            return memoryview(b"")
        try:
            # The response's own buffer: a chunk reader decodes from it without a copy.
            return memoryview(obstore.get_range(self._store, key, start=start, length=length))
        except _OBSTORE_ERRORS as exc:
            if _status(exc) == 416:
                return memoryview(b"")  # the whole range lies past the end of the object
            raise self._translate(exc, key) from None

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        check_key(key)
        try:
            result = obstore.get(self._store, key)
            return bytes(result.bytes()), self._version_of(result.meta)
        except _OBSTORE_ERRORS as exc:
            raise self._translate(exc, key) from None

    def _put(self, key: str, data: Payload, mode: PutMode) -> PutResult:
        store = self._store if mode == "overwrite" else self._conditional
        return obstore.put(store, key, data, mode=mode)

    def put(self, key: str, data: Payload) -> None:
        check_key(key)
        try:
            self._put(key, data, "overwrite")
        except _OBSTORE_ERRORS as exc:
            raise self._translate(exc, key, key_lookup=False) from None

    def put_if_absent(self, key: str, data: Payload) -> bool:
        check_key(key)
        try:
            self._put(key, data, "create")
        except (obx.AlreadyExistsError, obx.PreconditionError) as exc:
            if _status(exc) == 409:
                # S3 answers 409 while a concurrent conditional write is in flight,
                # which may yet fail: the object does not necessarily exist.
                raise TransientStorageError(f"{key}: concurrent conditional write") from None
            return False
        except obx.NotSupportedError as exc:
            raise self._unsupported(exc) from None
        except _OBSTORE_ERRORS as exc:
            raise self._conditional_error(exc, key) from None
        return True

    def compare_and_swap(self, key: str, data: Payload, expected: str | None) -> str:
        check_key(key)
        mode: PutMode
        if expected is None:
            mode = "create"
        elif self._version_field == "version":
            mode = {"version": expected}
        else:
            mode = {"e_tag": expected}
        try:
            result = self._put(key, data, mode)
        except (obx.AlreadyExistsError, obx.PreconditionError, *_NOT_FOUND) as exc:
            if _no_bucket(exc):
                raise self._translate(exc, key, key_lookup=False) from None
            # A precondition on a deleted object fails as not-found on some stores.
            raise RefConflict(key, expected, None) from None
        except obx.NotSupportedError as exc:
            raise self._unsupported(exc) from None
        except _OBSTORE_ERRORS as exc:
            raise self._conditional_error(exc, key) from None
        version = self._version_of(result)
        return version or self.stat(key).version

    def _conditional_error(self, exc: BaseException, key: str) -> StorageError:
        """A conditional write's error: a 501 (an S3-compatible store that does not know
        the If-None-Match or If-Match header) means conditional writes are unsupported."""
        if _status(exc) == 501:
            return self._unsupported(exc)
        if reason := _connection_problem(exc):
            # Sent through the client that does not retry: RetryingBackend retries it
            # instead, and tells its own landed attempt from another writer's.
            return TransientStorageError(f"{key} in {self._location}: {reason}")
        return self._translate(exc, key, key_lookup=False)

    def _unsupported(self, exc: BaseException) -> ConditionalWritesUnsupported:
        return ConditionalWritesUnsupported(
            f"{self._location} does not support conditional writes: {_summary(exc)}"
        )

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            obstore.delete(self._store, key)
        except _OBSTORE_ERRORS as exc:
            error = self._translate(exc, key)
            if not isinstance(error, ObjectNotFound):
                raise error from None

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[str]:
        try:
            for chunk in obstore.list(self._store, prefix or None, chunk_size=1000):
                for meta in chunk:
                    yield meta["path"]
        except _OBSTORE_ERRORS as exc:
            raise self._translate(exc, prefix or "/", key_lookup=False) from None

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        try:
            meta = obstore.head(self._store, key)
        except _OBSTORE_ERRORS as exc:
            raise self._translate(exc, key) from None
        return ObjectInfo(key, meta["size"], self._version_of(meta))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def flush(self) -> None:
        """Object stores acknowledge a PUT only once it is durable: nothing to do."""

    def close(self) -> None:
        pass
