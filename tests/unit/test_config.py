"""The config file: its store locations, including the original Datamon's bucket names."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamon.config import STORE_ENV, Config, bucket_location, load_config
from datamon.errors import ConfigError

SEED_CONFIG = """\
metadata: datamon-meta-data
blob: datamon-blob-data
email: ritesh@example.com
name: Ritesh H Shukla
credential: {credential}
"""


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)


@pytest.mark.parametrize(
    ("given", "read_as"),
    [
        ("datamon-meta-data", "gs://datamon-meta-data"),
        ("bucket.example.com", "gs://bucket.example.com"),
        ("./datamon-meta-data", "./datamon-meta-data"),
        ("/srv/datamon", "/srv/datamon"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("meta/data", "meta/data"),
        ("Upper-Case", "Upper-Case"),
        ("", ""),
    ],
)
def test_a_bare_bucket_name_is_a_gcs_bucket(given: str, read_as: str) -> None:
    assert bucket_location(given) == read_as


def test_the_seed_config_file_names_gcs_buckets(tmp_path: Path) -> None:
    credential = tmp_path / "application_default_credentials.json"
    credential.write_text("{}")
    path = tmp_path / "datamon.yaml"
    path.write_text(SEED_CONFIG.format(credential=credential))
    config = load_config(path)
    assert config.metadata_location == "gs://datamon-meta-data"
    assert config.blob_location == "gs://datamon-blob-data"
    options = config.store_options(config.metadata_location)
    assert options == {"service_account": str(credential)}


def test_a_missing_credential_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "datamon.yaml"
    path.write_text(SEED_CONFIG.format(credential="/nowhere/credentials.json"))
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"no credential file at /nowhere/credentials\.json"):
        config.store_options(config.metadata_location)
    # A store elsewhere has no use for the GCS credential, and does not look for it.
    assert config.store_options("/srv/datamon") == {}


def test_store_and_blob_fall_back_in_order(tmp_path: Path) -> None:
    assert Config(metadata="meta").blob_location == "gs://meta"
    assert Config(store="/srv/s", blob="b-bucket").metadata_location == "/srv/s"
    assert Config(store="/srv/s", blob="b-bucket").blob_location == "gs://b-bucket"
