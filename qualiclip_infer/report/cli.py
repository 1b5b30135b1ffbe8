"""``qualiclip-report``: the HTML report of a saved ``qualiclip-score`` output (csv, jsonl, json or Parquet), without
the model.

No torch is imported: the page is built from the file and the images, so ``--help`` is instant and the command
runs where the model is not installed.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from .._cli import (EXIT_FAILURES, EXIT_OK, EXIT_USAGE, Parser, UsageError, exit_status_epilog, positive_int, run,
                    say)
from .._version import __version__
from ..constants import default_workers
from ..score_files import ScoresFileError
from .publish import map_files, publish_for_command
from .rows import read_rows

PROG = "qualiclip-report"


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-report`` argument parser."""
    parser = Parser(
        prog=PROG,
        description="Build a static HTML report (summary, histogram, gallery worst first, failed inputs, quality "
                    "maps) from a qualiclip-score output file. The page opens from disk with no server or network; "
                    "its thumbnails go to a <name>_files folder beside it.",
        epilog=exit_status_epilog("0 report written, 1 written but some pictures could not be made"))
    parser.add_argument("scores", metavar="SCORES_FILE",
                        help="a qualiclip-score output: .csv, .jsonl, .json, .parquet or a folder of Parquet parts")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-o", "--output", metavar="REPORT.html",
                        help="the page to write (default: SCORES_FILE with the suffix .html)")
    parser.add_argument("--maps", metavar="DIR",
                        help="the --maps folder of the qualiclip-score run: its maps are shown over the large views")
    parser.add_argument("--root", metavar="DIR",
                        help="folder the file's relative image paths are relative to (default: the current folder, "
                             "where qualiclip-score ran)")
    parser.add_argument("--title", help="the page's title (default: 'Image quality report')")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), metavar="N",
                        help="image decoding threads (default: number of available CPUs, at most 8)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-report``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run(PROG, lambda: _run(args), usage_errors=(ScoresFileError,), interrupted="no page was written")


def _run(args: argparse.Namespace) -> int:
    rows = read_rows(args.scores)
    if args.maps and not os.path.isdir(args.maps):
        raise UsageError(f"--maps {args.maps}: not a folder")
    output = args.output or os.path.splitext(args.scores.rstrip("/" + os.sep))[0] + ".html"
    maps = map_files(rows, args.maps, args.root) if args.maps else None
    ok = publish_for_command(rows, output, say=lambda message: say(PROG, message), quiet=args.quiet, maps=maps,
                             root=args.root, workers=args.workers, title=args.title, note=f"from {args.scores}")
    return EXIT_USAGE if ok is None else EXIT_OK if ok else EXIT_FAILURES
