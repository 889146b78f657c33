"""Shared fixtures; their logic lives in datamon.testing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from datamon.testing.services import MotoS3, require_service


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    try:
        server = MotoS3()
    except Exception as exc:
        require_service("moto S3 server", f"{type(exc).__name__}: {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_location(moto_s3: MotoS3) -> tuple[str, dict[str, str]]:
    """A fresh bucket per test, as ``(url, options)`` for open_backend."""
    bucket_url = moto_s3.make_bucket(f"bucket-{secrets.token_hex(6)}")
    return f"{bucket_url}/prefix", moto_s3.options
