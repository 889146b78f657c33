"""Re-reading and re-hashing everything a bundle reaches, collecting every problem found."""

from __future__ import annotations

from dataclasses import dataclass, field

from datamon.api.progress import NoProgress, Progress
from datamon.api.store import Store
from datamon.cafs.index import load_pack_index
from datamon.cafs.layout import pack_key
from datamon.core.model import Bundle, ChunkRef, Kind
from datamon.errors import IntegrityError, ObjectNotFound

# What verify reports as damage: objects missing, or not what their names say. Anything else
# (access refused, the store unreachable) is no finding about the bundle: it is raised.
DAMAGE = (IntegrityError, ObjectNotFound)


@dataclass
class VerifyReport:
    files: int = 0
    chunks: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(
    store: Store,
    bundle: Bundle,
    progress: Progress | None = None,
    checked: set[bytes] | None = None,
) -> VerifyReport:
    """Check every tree and every chunk once; damage is reported per file, not raised, and
    an error that says nothing of the bundle (the store unreachable, access refused) is."""
    progress = progress or NoProgress()
    report = VerifyReport()
    seen = checked if checked is not None else set()
    # Frames this thread read before are checked again too: a pack may have been damaged
    # since.
    store.reader.forget()
    for pack_id in bundle.packs:
        try:
            # Read from the store, not the local cache: other machines depend on these.
            store.index.record(load_pack_index(store.blob, pack_id))
            if not store.blob.exists(pack_key(pack_id)):
                report.problems.append(f"pack {pack_id}: missing from the store")
        except DAMAGE as exc:
            report.problems.append(f"pack index {pack_id}: {exc}")
    try:
        entries = list(store.trees.walk(bytes.fromhex(bundle.tree)))
    except DAMAGE as exc:
        report.problems.append(f"tree: {exc}")
        return report
    progress.start("verifying", sum(e.size for _p, e in entries if e.kind == Kind.FILE))
    bad: dict[bytes, str] = {}
    try:
        for path, entry in entries:
            if entry.kind != Kind.FILE:
                continue
            report.files += 1
            todo: list[ChunkRef] = []
            for ref in entry.chunks:
                if ref.id not in seen:
                    seen.add(ref.id)
                    todo.append(ref)
            _check(store, todo, report, bad)
            damage = sorted({bad[r.id] for r in entry.chunks if r.id in bad})
            for problem in damage:
                report.problems.append(f"{path}: {problem}")
            progress.advance(entry.size)
    finally:
        progress.finish()
    return report


def _check(store: Store, refs: list[ChunkRef], report: VerifyReport, bad: dict[bytes, str]) -> None:
    """Read ``refs``; on damage, read them one by one so that every bad chunk is named.

    A chunk is counted once, when it is read as a whole group or on its own."""
    chunks = size = 0
    try:
        for data in store.reader.stream(refs):
            chunks += 1
            size += len(data)
    except DAMAGE:
        pass
    else:
        report.chunks += chunks
        report.bytes += size
        return
    for ref in refs:
        try:
            for data in store.reader.stream([ref]):
                report.chunks += 1
                report.bytes += len(data)
        except DAMAGE as exc:
            bad[ref.id] = str(exc)
