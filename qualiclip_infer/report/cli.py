"""``qualiclip-report``: the HTML report of a saved ``qualiclip-score`` output (csv, jsonl, json or Parquet), without
the model; and the report step that ``qualiclip-score --report`` and ``qualiclip-eval --report`` run after scoring.

No torch is imported: the page is built from the file and the images, so ``--help`` is instant and the command
runs where the model is not installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .._errors import first_line
from .._version import __version__
from ..files import mirrored_paths
from .page import ReportResult, build_report
from .rows import ReportInputError, ReportRow, read_rows

PROG = "qualiclip-report"
EXIT_OK, EXIT_PICTURES, EXIT_USAGE = 0, 1, 2
_PROBLEMS_SHOWN = 5


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-report`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a static HTML report (summary, histogram, gallery worst first, failed inputs, quality "
                    "maps) from a qualiclip-score output file. The page opens from disk with no server or network; "
                    "its thumbnails go to a <name>_files folder beside it.",
        epilog="Exit status: 0 report written, 1 written but some pictures could not be made, 2 usage error.")
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
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                        help="image decoding threads (default: number of CPUs, at most 8)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-report``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        rows = read_rows(args.scores)
    except ReportInputError as error:
        print(f"{PROG}: error: {first_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    output = args.output or os.path.splitext(args.scores.rstrip("/" + os.sep))[0] + ".html"
    maps = map_files(rows, args.maps, args.root) if args.maps else None
    if args.maps and not os.path.isdir(args.maps):
        print(f"{PROG}: error: --maps {args.maps}: not a folder", file=sys.stderr)
        return EXIT_USAGE
    ok = write_report(rows, output, maps=maps, root=args.root, workers=args.workers, title=args.title,
                      note=f"from {args.scores}", log=None if args.quiet else _log(PROG))
    return EXIT_USAGE if ok is None else EXIT_OK if ok else EXIT_PICTURES


def map_files(rows: Sequence[ReportRow], folder: str, root: Optional[str] = None) -> Mapping[str, str]:
    """Each row's map file under a ``--maps`` folder, laid out as ``qualiclip-score`` lays them out (from all the
    paths it scored: a file that lists them all gives the same layout)."""
    paths = [row.path for row in rows]
    sources = [path if root is None or os.path.isabs(path) else os.path.join(root, path) for path in paths]
    placed = mirrored_paths(sources, folder, ".png")
    return {path: placed[source] for path, source in zip(paths, sources)}


def write_report(source: Union[Sequence[ReportRow], str, Any], page: str, *, log: Optional[Callable[[str], None]],
                 tool: str = PROG, build: Optional[Callable[..., ReportResult]] = None, **options) -> Optional[bool]:
    """Builds a report and says how it went: for this command and for ``--report`` of the scoring commands.

    Args:
        source: The rows, or a scores file to read them from (after a ``--resume`` run: the whole file); with
            ``build``, what it takes (an evaluation).
        page: The HTML file.
        log: Receives the one-line messages; ``None``: only errors are printed.
        tool: The command named in messages.
        build: Builds the page from ``source`` (default: :func:`~qualiclip_infer.report.build_report`).
        options: Further arguments of the builder.

    Returns:
        ``True`` when written with every picture, ``False`` when some pictures are missing, ``None`` when no report
        could be written (the error is printed).
    """
    try:
        if build is not None:
            result = build(source, page, **options)
        else:
            result = build_report(read_rows(source) if isinstance(source, str) else source, page, **options)
    except (OSError, ReportInputError) as error:
        where = getattr(error, "filename", None) or page
        cause = getattr(error, "strerror", None) or first_line(error)
        print(f"{tool}: error: report not written: {where}: {cause}", file=sys.stderr)
        return None
    for problem in result.problems[:_PROBLEMS_SHOWN]:
        print(f"{tool}: {problem}", file=sys.stderr)
    if len(result.problems) > _PROBLEMS_SHOWN:
        print(f"{tool}: ... and {len(result.problems) - _PROBLEMS_SHOWN} more pictures not made", file=sys.stderr)
    if log is not None:
        log(f"report: {result.page} ({result.scored} of {result.images} images scored, "
            f"{result.previews_made} pictures made)")
    return not result.problems


def _log(tool: str) -> Callable[[str], None]:
    return lambda message: print(f"{tool}: {message}", file=sys.stderr)

