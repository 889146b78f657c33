"""``datamon demo``: the README's short tour, run against the configured store."""

from __future__ import annotations

import os
import random
import tempfile
import time

import click

from datamon.api.repository import Repository
from datamon.api.upload import UploadOptions
from datamon.cli.context import AppContext, pass_app
from datamon.cli.output import count, line, timestamp
from datamon.config import Config
from datamon.core.model import Author

MESSAGE = "The initial commit"


def _sample_tree(root: str) -> None:
    rng = random.Random(7)
    os.makedirs(os.path.join(root, "tables"))
    os.makedirs(os.path.join(root, "images", "raw"))
    os.makedirs(os.path.join(root, "empty"))
    for i in range(3):
        with open(os.path.join(root, "tables", f"part-{i}.csv"), "w") as f:
            f.write("id,value,label\n")
            for row in range(20000):
                f.write(f"{row},{rng.random():.6f},{rng.choice('abcde')}\n")
    for i in range(4):
        with open(os.path.join(root, "images", "raw", f"img-{i}.bin"), "wb") as f:
            f.write(rng.randbytes(256 * 1024))
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("A sample dataset made by `datamon demo`.\n")
    os.symlink("tables/part-0.csv", os.path.join(root, "latest.csv"))


@click.command()
@pass_app
def demo(app: AppContext) -> None:
    """Create a repo, upload a sample tree with a label, list, download and verify.

    Runs on the configured store (the local default ~/.datamon/store if none).

    \b
    Example:
      datamon demo
    """
    cfg = app.config
    if not cfg.name:
        cfg = Config(name="Datamon Demo", email="demo@localhost", path=cfg.path)
        app._config = cfg
    author = Author(cfg.name, cfg.email)
    app.may_create = True  # it creates a repo, in a new store too
    store = app.store
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{random.randrange(1000):03d}"
    with tempfile.TemporaryDirectory(prefix="datamon-demo-") as work:
        source = os.path.join(work, "data")
        _sample_tree(source)
        click.echo(
            f"$ datamon repo create --repo {name} --description 'demo'   # store {store.url}"
        )
        repo = Repository.create(store, name, "Datamon demo repo", author)
        click.echo(
            f"$ datamon bundle upload --path {source} --message '{MESSAGE}' --repo {name} "
            "--label init"
        )
        result = repo.upload(source, UploadOptions(MESSAGE, author, label="init"))
        click.echo(f"Uploaded bundle id:{result.bundle_id}")
        click.echo(f"$ datamon bundle list --repo {name}")
        for bid, b in repo.bundles():
            line(bid, timestamp(b.timestamp), b.message)
        click.echo(f"$ datamon label list --repo {name}")
        for ref in repo.labels():
            line(ref.name, ref.bundle, timestamp(ref.timestamp))
        target = os.path.join(work, "download")
        click.echo(f"$ datamon bundle download --repo {name} --destination {target} --label init")
        init = repo.resolve(label="init")
        got = repo.download(init, target)
        done = f"{count(got.files, 'file')} ({got.bytes} bytes)"
        click.echo(f"Downloaded {done} of bundle {init} to {target}")
        click.echo(f"$ datamon bundle verify --repo {name} --label init")
        report = repo.verify(result.bundle_id)
        changes = list(repo.diff_local(result.bundle_id, target))
        ok = report.ok and not changes
        click.echo(
            f"{result.bundle_id} , {report.files} files , {report.chunks} chunks checked , "
            f"{'ok' if ok else 'DAMAGED'}"
        )
        if not ok:
            raise click.ClickException("the downloaded tree differs from the upload")
    click.echo(f"Demo finished: repo {name} holds bundle {result.bundle_id} labelled init.")
