"""Real data tools reading (and writing) bundles through ``datamon://`` URLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import distributed
import duckdb
import fsspec
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.config import CACHE_ENV, CONFIG_ENV
from datamon.fs import DatamonFileSystem

PARTS = 4
ROWS = 1000


def frame() -> pd.DataFrame:
    ids = np.arange(ROWS)
    return pd.DataFrame({"id": ids, "x": ids * 0.5, "group": np.where(ids % 2 == 0, "a", "b")})


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "datamon.yaml"))
    DatamonFileSystem.clear_instance_cache()
    yield
    DatamonFileSystem.clear_instance_cache()


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    """A local store whose repo ``sales`` has, under label ``v1``, a CSV file and a folder of
    Parquet files; the config file names the store and an author."""
    src = tmp_path / "src"
    (src / "parquet").mkdir(parents=True)
    df = frame()
    df.to_csv(src / "sales.csv", index=False)
    step = ROWS // PARTS
    for i in range(PARTS):
        df.iloc[i * step : (i + 1) * step].to_parquet(src / "parquet" / f"part-{i}.parquet")
    location = str(tmp_path / "store")
    author = Author("Ada Lovelace", "ada@example.com")
    repo = Repository.create(Store.open(location), "sales", "sales data", author)
    repo.upload(str(src), UploadOptions("sales of the year", author, label="v1"))
    (tmp_path / "datamon.yaml").write_text(
        f"name: {author.name}\nemail: {author.email}\nstore: {location}\n"
    )
    return location


@pytest.fixture
def options(store_path: str) -> dict[str, Any]:
    return {"store": store_path}


def test_pandas_read_csv_and_parquet(options: dict[str, Any]) -> None:
    expected = frame()
    csv = pd.read_csv("datamon://sales@v1/sales.csv", storage_options=options)
    pd.testing.assert_frame_equal(csv, expected)
    one = pd.read_parquet("datamon://sales@v1/parquet/part-1.parquet", storage_options=options)
    pd.testing.assert_frame_equal(one, expected.iloc[250:500])
    whole = pd.read_parquet("datamon://sales@v1/parquet", storage_options=options)
    assert whole["x"].sum() == expected["x"].sum()
    # The config file names the store too: a plain URL works.
    assert len(pd.read_csv("datamon://sales/sales.csv")) == ROWS


def test_pandas_writes_commit_bundles(store_path: str, options: dict[str, Any]) -> None:
    summary = frame().groupby("group", as_index=False)["x"].sum()
    summary.to_parquet("datamon://sales@main/summary.parquet", storage_options=options)
    summary.to_csv("datamon://sales@main/summary.csv", index=False, storage_options=options)
    repo = Repository(Store.open(store_path), "sales")
    head = repo.bundle(repo.branch("main").bundle)
    assert head.files == PARTS + 3
    back = pd.read_parquet("datamon://sales/summary.parquet", storage_options=options)
    pd.testing.assert_frame_equal(back, summary)
    assert pd.read_csv("datamon://sales@main/summary.csv", storage_options=options).shape == (2, 2)


def test_pyarrow_dataset_over_a_folder(options: dict[str, Any]) -> None:
    fs = DatamonFileSystem(**options)
    dataset = ds.dataset("sales@v1/parquet", filesystem=fs, format="parquet")
    assert sorted(f.rsplit("/", 1)[1] for f in dataset.files) == [
        f"part-{i}.parquet" for i in range(PARTS)
    ]
    table = dataset.to_table(columns=["x"], filter=ds.field("group") == "a")
    assert table.num_rows == ROWS // 2
    assert pq.read_table("sales@v1/parquet/part-0.parquet", filesystem=fs).num_rows == 250


def test_polars(options: dict[str, Any]) -> None:
    with fsspec.open("datamon://sales@v1/sales.csv", "rb", **options) as f:
        csv = pl.read_csv(f)
    assert csv.shape == (ROWS, 3)
    part = pl.read_parquet(
        "datamon://sales@v1/parquet/part-2.parquet", use_pyarrow=True, storage_options=options
    )
    assert part["id"].to_list() == list(range(500, 750))
    fs = DatamonFileSystem(**options)
    lazy = pl.scan_pyarrow_dataset(ds.dataset("sales@v1/parquet", filesystem=fs, format="parquet"))
    total = lazy.filter(pl.col("group") == "b").select(pl.col("x").sum()).collect().item()
    assert total == frame().query("group == 'b'")["x"].sum()


def test_duckdb(options: dict[str, Any]) -> None:
    con = duckdb.connect()
    con.register_filesystem(DatamonFileSystem(**options))
    rows = con.sql(
        "SELECT count(*), sum(x) FROM read_parquet('datamon://sales@v1/parquet/*.parquet')"
    ).fetchall()
    assert rows == [(ROWS, frame()["x"].sum())]
    by_group = con.sql(
        "SELECT \"group\", count(*) FROM read_csv('datamon://sales@v1/sales.csv') "
        'GROUP BY "group" ORDER BY 1'
    ).fetchall()
    assert by_group == [("a", ROWS // 2), ("b", ROWS // 2)]


def test_dask_read_parquet_on_a_local_cluster(options: dict[str, Any]) -> None:
    with (
        distributed.LocalCluster(
            processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        ddf = dd.read_parquet("datamon://sales@v1/parquet", storage_options=options)
        assert ddf.npartitions == PARTS
        assert ddf["x"].sum().compute() == frame()["x"].sum()
        counts = ddf.groupby("group")["id"].count().compute().sort_index()
        assert counts.to_dict() == {"a": ROWS // 2, "b": ROWS // 2}


@pytest.mark.s3
def test_pandas_over_a_store_in_s3(s3_location: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, s3_options = s3_location
    author = Author("Ada Lovelace", "ada@example.com")
    frame().to_parquet(tmp_path / "data.parquet")
    repo = Repository.create(Store.open(url, options=s3_options), "s3sales", "", author)
    (tmp_path / "up").mkdir()
    (tmp_path / "data.parquet").rename(tmp_path / "up" / "data.parquet")
    repo.upload(str(tmp_path / "up"), UploadOptions("m", author, label="v1"))
    options = {"store": url, "options": s3_options}
    df = pd.read_parquet("datamon://s3sales@v1/data.parquet", storage_options=options)
    pd.testing.assert_frame_equal(df, frame())
