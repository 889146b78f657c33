"""Services that some tests need, and how to behave when one is missing.

Locally a missing service skips the tests that need it; on CI it fails them, so a
broken CI image cannot silently turn a suite of skips green.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from typing import TYPE_CHECKING, Any, NoReturn, Self

import pytest

if TYPE_CHECKING:
    from types import TracebackType

START_TIMEOUT = 15.0


def running_on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_service(name: str, reason: str) -> NoReturn:
    """Skip the current test (fail it on CI) because ``name`` is unavailable."""
    message = f"{name} is unavailable: {reason}"
    if running_on_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# Held by every conditional PUT that moto serves in this process (_atomic_conditional_puts).
_CONDITIONAL_PUTS = threading.Lock()


def _atomic_conditional_puts() -> None:
    """Make moto's conditional PUTs atomic, as S3's are.

    moto checks ``If-Match`` or ``If-None-Match`` and then stores the object, with nothing
    between the two: its threaded server let two swaps expecting one version both succeed (a
    counter raised by 8 threads under compare-and-swap ended below its count). Each
    conditional PUT now checks and stores under one lock; unconditional PUTs are left as
    they are.
    """
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    if getattr(original, "atomic_conditional", False):
        return

    def put_object(self: Any) -> Any:
        headers = self.headers
        if headers.get("If-Match") is None and headers.get("If-None-Match") is None:
            return original(self)
        with _CONDITIONAL_PUTS:
            return original(self)

    put_object.atomic_conditional = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign]


class MotoS3:
    """An S3 API served by moto on 127.0.0.1, in a background thread, whose conditional
    PUTs are atomic (:func:`_atomic_conditional_puts`)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        _atomic_conditional_puts()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        # start() waits without a timeout for a server thread that may have died.
        starter = threading.Thread(target=self._server.start, daemon=True)
        starter.start()
        starter.join(START_TIMEOUT)
        if starter.is_alive():
            raise RuntimeError(f"moto server did not start within {START_TIMEOUT:.0f}s")
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    @property
    def options(self) -> dict[str, str]:
        """obstore S3 options that point at this server."""
        return {
            "endpoint": self.endpoint,
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "allow_http": "true",
        }

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` and return its ``s3://`` URL."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        return f"s3://{name}"

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
