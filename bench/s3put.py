"""Raw object-store throughput: PUT every file of a tree as one object, N at a time.

    s3put.py --bucket NAME --src DIR --concurrency N [--option KEY=VALUE ...]

Prints ``bytes seconds`` of the PUT phase (the files are read in the workers, as Datamon
reads them). This is the W6 baseline Datamon's S3 upload is compared with.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import obstore
from obstore.store import S3Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--option", action="append", default=[])
    args = parser.parse_args()
    options = dict(item.split("=", 1) for item in args.option)
    store = S3Store(args.bucket, config=options)  # type: ignore[arg-type]
    paths = []
    for folder, _dirs, files in os.walk(args.src):
        paths += [os.path.join(folder, f) for f in sorted(files)]

    def put(path: str) -> int:
        with open(path, "rb") as f:
            data = f.read()
        obstore.put(store, os.path.relpath(path, args.src), data)
        return len(data)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        total = sum(pool.map(put, paths))
    print(total, f"{time.perf_counter() - start:.6f}")


if __name__ == "__main__":
    main()
