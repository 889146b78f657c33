"""The object-store backend at the edges the moto S3 server can show: a conditional write
whose reply is lost, keys that name a missing bucket's error code, prefixes a URL cuts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from datamon.errors import ConfigError, StoreUnreachable
from datamon.storage.url import open_backend
from datamon.testing.services import MotoS3


@contextmanager
def reply_lost(target: str, marker: bytes) -> Iterator[str]:
    """A proxy to ``target`` (``http://host:port``) on 127.0.0.1 that forwards everything,
    but closes the connection instead of passing on the reply to the first request whose
    first line holds ``marker``; yields its endpoint."""
    host, port = target.removeprefix("http://").split(":")
    listener = socket.create_server(("127.0.0.1", 0))
    dropped = threading.Event()

    def pump(client: socket.socket) -> None:
        upstream = socket.create_connection((host, int(port)))
        drop = threading.Event()

        def up() -> None:
            with suppress(OSError):
                while data := client.recv(65536):
                    if marker in data.split(b"\r\n", 1)[0] and not dropped.is_set():
                        dropped.set()
                        drop.set()
                    upstream.sendall(data)

        def down() -> None:
            with suppress(OSError):
                while data := upstream.recv(65536):
                    if drop.is_set():  # the request landed; its reply is lost
                        for end in (client, upstream):
                            with suppress(OSError):
                                end.shutdown(socket.SHUT_RDWR)
                            end.close()
                        return
                    client.sendall(data)

        threading.Thread(target=up, daemon=True).start()
        threading.Thread(target=down, daemon=True).start()

    def accept() -> None:
        with suppress(OSError):
            while True:
                client, _addr = listener.accept()
                pump(client)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
    assert dropped.is_set(), "no request was caught"


@pytest.mark.s3
@pytest.mark.parametrize("write", ["create", "swap"])
def test_a_conditional_write_whose_reply_is_lost_succeeds(
    moto_s3: MotoS3, s3_location: tuple[str, dict[str, str]], write: str
) -> None:
    url, options = s3_location
    setup = open_backend(url, options)
    before = setup.compare_and_swap("labels/x", b"first", None) if write == "swap" else None
    with reply_lost(moto_s3.endpoint, b"PUT") as proxy:
        backend = open_backend(url, {**options, "endpoint": proxy})
        if write == "create":
            assert backend.put_if_absent("repos/new.json", b"mine") is True
        else:
            version = backend.compare_and_swap("labels/x", b"second", before)
            assert version == setup.stat("labels/x").version
    key = "repos/new.json" if write == "create" else "labels/x"
    assert setup.get(key) == (b"mine" if write == "create" else b"second")


@pytest.mark.s3
def test_keys_that_hold_a_bucket_error_code_are_keys(
    moto_s3: MotoS3, s3_location: tuple[str, dict[str, str]]
) -> None:
    url, options = s3_location
    backend = open_backend(url, options)
    assert backend.put_if_absent("labels/NoSuchBucket", b"a label") is True
    assert backend.get("labels/NoSuchBucket") == b"a label"
    assert not backend.exists("labels/ContainerNotFound")
    missing = open_backend(f"s3://no-such-bucket-{id(backend)}/p", options)
    with pytest.raises(StoreUnreachable, match="does not exist"):
        missing.get("config.json")


@pytest.mark.parametrize("cut", ["#", "?"])
def test_a_prefix_a_url_would_cut_is_refused(cut: str) -> None:
    with pytest.raises(ConfigError, match="cannot be in a prefix"):
        open_backend(f"s3://bucket/team{cut}1/data", {"region": "us-east-1"})


@contextmanager
def no_conditional_writes() -> Iterator[str]:
    """An S3-like server on 127.0.0.1 that answers conditional puts with 501 Not
    Implemented, as some S3-compatible stores do; yields its endpoint and counts puts."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            puts.append(self.path)
            if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
                body = b"<Error><Code>NotImplemented</Code><Message>no</Message></Error>"
                self.send_response(501)
            else:
                body = b""
                self.send_response(200)
                self.send_header("ETag", '"1"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    puts: list[str] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
    assert len(puts) == 1, puts  # not retried


def test_a_store_that_answers_conditional_puts_with_501_has_none() -> None:
    from datamon.errors import ConditionalWritesUnsupported

    options = {"region": "us-east-1", "access_key_id": "x", "secret_access_key": "y"}
    with no_conditional_writes() as endpoint:
        backend = open_backend("s3://bucket/p", {**options, "endpoint": endpoint})
        with pytest.raises(ConditionalWritesUnsupported, match="conditional writes"):
            backend.put_if_absent("probe", b"x")
