"""Every backend against the contract, plus failure behaviour of the cloud backend."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from datamon.errors import (
    AccessDenied,
    ObjectNotFound,
    RefConflict,
    StorageError,
    StoreUnreachable,
    TransientStorageError,
)
from datamon.storage import Backend, open_backend
from datamon.storage.local import LocalBackend
from datamon.storage.memory import MemoryBackend
from datamon.storage.objectstore import ObjectStoreBackend
from datamon.storage.retry import RetryingBackend
from datamon.testing.backend_contract import BackendContract
from datamon.testing.services import MotoS3, require_service

DUMMY_S3 = {"region": "us-east-1", "access_key_id": "x", "secret_access_key": "y"}


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return LocalBackend(tmp_path / "store")


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self) -> Backend:
        return MemoryBackend()


class TestRetryingLocalBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return RetryingBackend(LocalBackend(tmp_path / "store"))


@pytest.mark.s3
class TestObjectStoreS3(BackendContract):
    @pytest.fixture
    def backend(self, s3_location: tuple[str, dict[str, str]]) -> Iterator[Backend]:
        url, options = s3_location
        backend = open_backend(url, options)
        yield backend
        backend.close()


def assert_one_line(error: BaseException) -> None:
    message = str(error)
    assert "\n" not in message and "Debug source" not in message
    assert len(message) < 300, message


# --- failures of the cloud backend -------------------------------------------------


def test_unreachable_endpoint_fails_fast() -> None:
    backend = open_backend("s3://bucket/prefix", {**DUMMY_S3, "endpoint": "http://127.0.0.1:1"})
    for attempt in (
        lambda: backend.get("k"),
        lambda: backend.put("k", b"x"),
        lambda: list(backend.list()),
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnreachable) as info:
            attempt()
        assert time.monotonic() - started < 20
        assert "127.0.0.1:1" in str(info.value)
        assert "connection refused" in str(info.value)
        assert_one_line(info.value)


def test_silent_server_times_out() -> None:
    with socket.socket() as listener:
        # Connections complete in the kernel backlog, but nothing ever answers.
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        options = {**DUMMY_S3, "endpoint": endpoint, "timeout": "1s", "max_retries": "0"}
        backend = ObjectStoreBackend.from_url("s3://bucket/p", options)
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match="timed out") as info:
            backend.get("k")
        assert time.monotonic() - started < 10
        assert_one_line(info.value)


@pytest.mark.s3
def test_missing_bucket_is_reported_clearly(moto_s3: MotoS3) -> None:
    backend = open_backend("s3://no-such-bucket/prefix", moto_s3.options)
    for attempt in (
        lambda: backend.get("k"),
        lambda: backend.put("k", b"x"),
        lambda: list(backend.list()),
        lambda: backend.compare_and_swap("k", b"x", None),
    ):
        with pytest.raises(StorageError, match="no-such-bucket") as info:
            attempt()
        assert not isinstance(info.value, ObjectNotFound)
        assert "does not exist" in str(info.value)
        assert_one_line(info.value)


class StatusHandler(BaseHTTPRequestHandler):
    status = 500

    def _reply(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>Injected</Code><Message>injected failure</Message></Error>"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _reply

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def status_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AccessDenied),
        (403, AccessDenied),
        (429, TransientStorageError),
        (500, TransientStorageError),
        (503, TransientStorageError),
        (400, StorageError),
    ],
)
def test_http_errors_are_translated(
    status_server: ThreadingHTTPServer, status: int, error: type[StorageError]
) -> None:
    StatusHandler.status = status
    endpoint = f"http://127.0.0.1:{status_server.server_address[1]}"
    options = {**DUMMY_S3, "endpoint": endpoint, "max_retries": "1"}
    backend = ObjectStoreBackend.from_url("s3://bucket/p", options)
    for attempt in (
        lambda: backend.get("k"),
        lambda: backend.put("k", b"x"),
        lambda: backend.stat("k"),
        lambda: backend.compare_and_swap("k", b"x", '"etag"'),
    ):
        with pytest.raises(StorageError) as info:
            attempt()
        assert type(info.value) is error
        assert_one_line(info.value)


def test_conditional_write_responses(status_server: ThreadingHTTPServer) -> None:
    endpoint = f"http://127.0.0.1:{status_server.server_address[1]}"
    backend = ObjectStoreBackend.from_url("s3://bucket/p", {**DUMMY_S3, "endpoint": endpoint})
    StatusHandler.status = 412
    assert backend.put_if_absent("k", b"x") is False
    with pytest.raises(RefConflict):
        backend.compare_and_swap("k", b"x", None)
    with pytest.raises(RefConflict):
        backend.compare_and_swap("k", b"x", '"etag"')
    # 409: another conditional write is in flight and may still fail.
    StatusHandler.status = 409
    with pytest.raises(TransientStorageError):
        backend.put_if_absent("k", b"x")
    with pytest.raises(RefConflict):
        backend.compare_and_swap("k", b"x", '"etag"')


def test_http_error_message_names_the_status(status_server: ThreadingHTTPServer) -> None:
    StatusHandler.status = 403
    endpoint = f"http://127.0.0.1:{status_server.server_address[1]}"
    backend = ObjectStoreBackend.from_url("s3://bucket/p", {**DUMMY_S3, "endpoint": endpoint})
    with pytest.raises(AccessDenied) as info:
        backend.get("k")
    assert str(info.value) == (
        "access denied to k in s3://bucket/p: HTTP 403 Forbidden Injected: injected failure"
    )


# --- service helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("", pytest.skip.Exception), ("true", pytest.fail.Exception), ("1", pytest.fail.Exception)],
)
def test_require_service(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="thing is unavailable: gone"):
        require_service("thing", "gone")


# --- RetryingBackend ---------------------------------------------------------------


class FlakyBackend(MemoryBackend):
    """Fails the next calls to get() and compare_and_swap() with queued errors."""

    def __init__(self, failures: list[StorageError]) -> None:
        super().__init__("flaky")
        self.failures = failures
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)

    def get(self, key: str) -> bytes:
        self._maybe_fail()
        return super().get(key)

    def compare_and_swap(self, key: str, data: bytes, expected: str | None) -> str:
        self._maybe_fail()
        return super().compare_and_swap(key, data, expected)


def test_retrying_backend_retries_transient_errors() -> None:
    inner = FlakyBackend([TransientStorageError("503"), TransientStorageError("timeout")])
    inner.put("k", b"v")
    sleeps: list[float] = []
    backend = RetryingBackend(inner, attempts=5, sleep=sleeps.append)
    assert backend.get("k") == b"v"
    assert inner.calls == 3
    assert len(sleeps) == 2
    assert all(0 < delay <= backend.max_delay for delay in sleeps)


def test_retrying_backend_gives_up_after_attempts() -> None:
    inner = FlakyBackend([TransientStorageError(str(i)) for i in range(10)])
    sleeps: list[float] = []
    backend = RetryingBackend(inner, attempts=3, sleep=sleeps.append)
    with pytest.raises(TransientStorageError, match="2"):
        backend.get("k")
    assert inner.calls == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "failure",
    [
        ObjectNotFound("k"),
        RefConflict("k", "v1"),
        StoreUnreachable("down"),
        AccessDenied("no"),
        StorageError("other"),
    ],
)
def test_retrying_backend_does_not_retry_other_errors(failure: StorageError) -> None:
    inner = FlakyBackend([failure])
    sleeps: list[float] = []
    backend = RetryingBackend(inner, sleep=sleeps.append)
    with pytest.raises(type(failure)):
        backend.compare_and_swap("k", b"x", None)
    assert inner.calls == 1
    assert sleeps == []


@pytest.mark.s3
def test_the_test_servers_conditional_puts_are_atomic(
    s3_location: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two swaps expecting one version, with moto slowed between its check and its store:
    one lands and the other conflicts, as on S3 (moto alone let both land)."""
    from moto.s3.models import S3Backend

    stored = S3Backend.put_object

    def slow_put_object(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return stored(self, *args, **kwargs)

    url, options = s3_location
    backend = open_backend(url, options)
    try:
        version = backend.compare_and_swap("ref", b"0", None)
        monkeypatch.setattr(S3Backend, "put_object", slow_put_object)
        outcomes: list[str] = []

        def swap(data: bytes) -> None:
            try:
                backend.compare_and_swap("ref", data, version)
                outcomes.append("landed")
            except RefConflict:
                outcomes.append("conflict")

        threads = [threading.Thread(target=swap, args=(b"%d" % n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes) == ["conflict", "landed"]
        monkeypatch.undo()
        assert backend.get("ref") in (b"1", b"2")
    finally:
        backend.close()
