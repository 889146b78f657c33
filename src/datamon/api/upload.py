"""Uploading a folder as a new bundle: scan, ingest chunks, write trees, the bundle, then refs."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from datamon.api.parallel import bounded_map, size_groups
from datamon.api.progress import NoProgress, Progress
from datamon.api.scan import LocalDir, LocalFile, scan
from datamon.api.store import Store
from datamon.cafs.ingest import Ingester
from datamon.cafs.packer import PackWriter
from datamon.core.model import FORMAT_VERSION, Author, Bundle, ChunkRef, Entry, Kind
from datamon.errors import RefConflict, SourceUnreadable
from datamon.metadata.layout import check_name

DEFAULT_BRANCH = "main"
DEFAULT_CONCURRENCY = 4
GROUP_FILES = 256
GROUP_BYTES = 8 << 20


@dataclass(frozen=True)
class UploadOptions:
    message: str
    author: Author
    branch: str = DEFAULT_BRANCH
    label: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass(frozen=True)
class UploadResult:
    bundle_id: str
    bundle: Bundle
    chunks: int
    new_chunks: int
    bytes_read: int
    bytes_stored: int
    packs_written: int
    trees_written: int


def upload(
    store: Store, repo: str, path: str, options: UploadOptions, progress: Progress | None = None
) -> UploadResult:
    store.repos.get(repo)
    check_name("branch", options.branch)
    if options.label:
        check_name("label", options.label)
    progress = progress or NoProgress()
    root = scan(path)
    # In the order downloads walk the tree, so that packs hold files as they are read back.
    files = _ordered(root)
    store.index.sync()
    # Remote stores need several PUTs in flight to fill the network; local disk does not.
    writers = 2 if store.blob.url.startswith("file:") else max(2, min(options.concurrency, 4))
    packer = PackWriter(store.index, store.config.pack_size, writers, writers)
    ingester = Ingester(
        store.chunker,
        store.index,
        packer,
        store.config.compression_level,
        stat_cache=store.stat_cache,
    )
    refs: dict[str, tuple[ChunkRef, ...]] = {}

    def ingest(group: list[tuple[str, LocalFile]]) -> list[tuple[ChunkRef, ...]]:
        try:
            return ingester.ingest_files([(full, f.st) for full, f in group])
        except OSError as exc:
            where = exc.filename or (group[0][1].path if len(group) == 1 else path)
            raise SourceUnreadable(str(where), exc.strerror or str(exc)) from None

    progress.start("uploading", sum(f.st.st_size for _full, f in files))
    try:
        for group, results in bounded_map(ingest, _groups(files), max(1, options.concurrency)):
            for (_full, f), chunk_refs in zip(group, results, strict=True):
                refs[f.path] = chunk_refs
            progress.advance(sum(f.st.st_size for _full, f in group))
        written = packer.close()
    except BaseException:
        packer.abort()
        raise
    finally:
        ingester.close()
        progress.finish()
    trees_before = store.trees.written
    top = _build(store, root, refs)
    # Packs (and their indexes) must be durable before a ref can name them.
    store.blob.flush()
    # Only now that the packs are durable may the stat cache name them (design §9).
    ingester.remember()
    packs = tuple(sorted(set(written) | ingester.stats.packs_used))
    bid, bundle = _commit(store, repo, top, packs, options)
    stats = ingester.stats
    return UploadResult(
        bundle_id=bid,
        bundle=bundle,
        chunks=stats.chunks,
        new_chunks=stats.new_chunks,
        bytes_read=stats.bytes_read,
        bytes_stored=packer.bytes_written,
        packs_written=len(written),
        trees_written=store.trees.written - trees_before,
    )


def _ordered(root: LocalDir) -> list[tuple[str, LocalFile]]:
    """Every file with its absolute path, sorted by the names along its path.

    A depth-first walk visiting each folder's files and subfolders by name gives that order,
    since a file's path is never a prefix of another's; the absolute path (``abspath``, as
    the stat cache keys files) is computed once per folder.
    """
    out: list[tuple[str, LocalFile]] = []
    stack: list[tuple[str, Iterator[LocalFile | LocalDir]]] = [_children(root)]
    while stack:
        prefix, children = stack[-1]
        for item in children:
            if isinstance(item, LocalDir):
                stack.append(_children(item))
                break
            out.append((prefix + item.name, item))
        else:
            stack.pop()
    return out


def _children(node: LocalDir) -> tuple[str, Iterator[LocalFile | LocalDir]]:
    items: list[LocalFile | LocalDir] = [*node.files, *node.dirs]
    items.sort(key=lambda item: item.name)
    return os.path.join(os.path.abspath(node.path), ""), iter(items)


def _groups(files: list[tuple[str, LocalFile]]) -> Iterator[list[tuple[str, LocalFile]]]:
    """A large file alone, small files together: one index query per group."""
    return size_groups(files, lambda f: f[1].st.st_size, GROUP_FILES, GROUP_BYTES)


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)


def _build(store: Store, node: LocalDir, refs: dict[str, tuple[ChunkRef, ...]]) -> Entry:
    """Store the directory's tree bottom-up; returns the entry that names it."""
    entries: list[Entry] = []
    size = count = 0
    for f in node.files:
        chunks = refs[f.path]
        fsize = sum(c.size for c in chunks)
        entries.append(
            Entry(f.name, Kind.FILE, _mode(f.st), f.st.st_mtime_ns, size=fsize, chunks=chunks)
        )
        size += fsize
        count += 1
    for link in node.links:
        entries.append(
            Entry(link.name, Kind.SYMLINK, 0o777, link.st.st_mtime_ns, target=link.target)
        )
    for sub in node.dirs:
        child = _build(store, sub, refs)
        entries.append(child)
        size += child.size
        count += child.files
    oid = store.trees.put(entries)
    return Entry(
        node.name, Kind.DIR, _mode(node.st), node.st.st_mtime_ns, size=size, tree=oid, files=count
    )


def _commit(
    store: Store, repo: str, top: Entry, packs: tuple[str, ...], options: UploadOptions
) -> tuple[str, Bundle]:
    """Write the bundle on top of the branch head and move the branch by compare-and-swap."""
    while True:
        current = store.refs.read(repo, "branch", options.branch)
        head = current[0].bundle if current else None
        bundle = Bundle(
            format=FORMAT_VERSION,
            repo=repo,
            parents=(head,) if head else (),
            message=options.message,
            author=options.author,
            timestamp=datetime.now(UTC),
            tree=top.tree.hex(),
            packs=packs,
            files=top.files,
            size=top.size,
            branch=options.branch,
        )
        bid = store.bundles.put(bundle)
        try:
            store.refs.move(repo, "branch", options.branch, bid, options.author.email, head)
        except RefConflict:
            now = store.refs.read(repo, "branch", options.branch)
            # A swap whose reply was lost may have landed: then the bundle is in the history.
            if now is None or all(move.bundle != bid for move in now[0].history):
                # Another writer moved the branch first: this bundle's parent is stale.
                store.bundles.delete(repo, bid)
                continue
        if options.label:
            store.refs.move(repo, "label", options.label, bid, options.author.email)
        return bid, bundle
