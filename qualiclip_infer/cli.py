"""``qualiclip-score``: scores image files, folders and glob patterns with QualiCLIP, one output row per image.

Scoring is the library's engine (``QualityScorer.iter_scores``): headers first, equal sizes batched, decoding in
threads ahead of the model, every failure confined to its image. This module finds the images, parses options and
writes rows, each flushed as it arrives in input order, so an interrupted run keeps everything it scored and
``--resume`` picks up where it stopped.

torch, open_clip and huggingface_hub are imported only after the arguments are parsed: ``--help`` and usage errors
stay instant, and ``--offline`` can switch huggingface_hub off before it reads its settings.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import stat
import sys
from typing import TYPE_CHECKING, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

from ._cli import (EXIT_FAILURES, EXIT_OK, Parser, UsageError, add_scoring_options, apply_offline, check_writable,
                   exit_status_epilog, finite_float, load_scorer, positive_float, read_prompts, run, say,
                   scorer_options)
from ._version import __version__
from .constants import DEFAULT_READ_TIMEOUT, MAP_METHODS
from .files import InputNotFoundError, find_images, mirrored_paths
from .output import (FORMATS, RESUMABLE_FORMATS, OutputFileError, RowWriter, choose_format, close_output,
                     open_output, prepare_resume)
from .ray_scoring import RayJobError, is_ray_address, parse_actors, ray_rows
from .results import CALIBRATED_COLUMNS
from .score_writing import PROG, MapWriter, score_and_write, summary
from .sources import SourceError, SourcePlan, plan_sources
from .streams import silence_libtiff
from .writelock import OutputBusyError, OutputLock

if TYPE_CHECKING:
    from .parquet_rows import ParquetRowWriter
    from .results import ScoreResult


# ---------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-score`` argument parser."""
    parser = Parser(
        prog=PROG,
        description="Score image quality with QualiCLIP (no reference; 0 = worst, 1 = best). "
                    "Writes one row per image: path, score, width, height, error.",
        epilog=exit_status_epilog("0 all images scored, 1 some could not be scored"),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image file (scored whatever its extension), folder (searched for files with an "
                             "extension Pillow can open) or quoted glob pattern ('**' recurses)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--info", action=PrintInfo,
                        help="print the version, whether the CPU has native bf16 and the installed backends, then exit")

    found = parser.add_argument_group("finding images")
    found.add_argument("--no-recursive", dest="recursive", action="store_false",
                       help="only the top level of each folder")
    found.add_argument("--hidden", action="store_true", help="include files and folders whose name starts with '.'")
    found.add_argument("--shard", type=parse_shard, metavar="K/N",
                       help="score only shard K of N (1 <= K <= N), chosen by a hash of each path, so N machines "
                            "can split a collection")
    found.add_argument("--image-col", metavar="NAME",
                       help="Parquet inputs: the column of encoded images (default: the first binary column among "
                            "jpg, png, webp, image, bytes; a Hugging Face {bytes, path} struct too)")
    found.add_argument("--id-col", action="append", metavar="NAME",
                       help="Parquet inputs: a column carried into the rows; repeat for several (default: key when "
                            "present, else the row number)")

    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="FILE", help="write rows to FILE instead of standard output")
    out.add_argument("--format", choices=FORMATS,
                     help="default: from the -o suffix (.csv, .jsonl, .json, .parquet), else table on a terminal, "
                          "else csv; parquet (needs the ray extra) writes a file, or part files into -o DIR/")
    out.add_argument("--resume", action="store_true",
                     help="with -o FILE (csv or jsonl): append, skipping images already in FILE")
    out.add_argument("--sort", choices=("score", "path"),
                     help="sort rows (ascending; written when all images are scored)")
    out.add_argument("--reverse", action="store_true", help="with --sort: descending")
    out.add_argument("--min-score", type=finite_float, metavar="X", help="list only images scoring at least X")
    out.add_argument("--max-score", type=finite_float, metavar="X", help="list only images scoring at most X")
    out.add_argument("--summary", action="store_true",
                     help="print count, mean, median, min, max and failures to standard error")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-file error messages")
    out.add_argument("--maps", metavar="DIR",
                     help="also draw a quality map of each scored image, a PNG under DIR named after the image "
                          "(x.jpg -> x.jpg.png), in the input's folders below the deepest one holding all inputs")
    out.add_argument("--report", metavar="REPORT.html",
                     help="after scoring, also write a static HTML report (gallery worst first, histogram, failed "
                          "inputs, the --maps over the large views), its thumbnails in REPORT_files/")
    out.add_argument("--calibration", metavar="FILE.json",
                     help="add the columns mos and percentile, on the scale of the dataset a calibration file "
                          "(qualiclip-eval --save-calibration) was fitted on, for the same model and settings")
    out.add_argument("--map-method", choices=MAP_METHODS, default="windows",
                     help="with --maps: windows (each cell the exact score of a 224x224 crop, every 112 pixels; "
                          "default) or tokens (one pass, a cell per 32x32 pixels; an approximation)")

    add_scoring_options(parser)
    parser.add_argument("--read-timeout", type=positive_float, default=DEFAULT_READ_TIMEOUT, metavar="SECONDS",
                        help=f"an image whose header read or decode takes longer (a stalled network mount) gets an "
                             f"error row and the run goes on (default: {DEFAULT_READ_TIMEOUT:g})")

    cluster = parser.add_argument_group("Ray cluster (needs: pip install \"qualiclip-infer[ray]\")")
    cluster.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                         help="score on Ray: 'local' (default: a new cluster on this machine), 'auto' (the cluster "
                              "this machine belongs to), ray://HOST:PORT or HOST:PORT; PATHs may also be s3://, "
                              "gs://... URIs; --threads and --workers then apply per actor")
    cluster.add_argument("--actors", type=_actors, metavar="N|MIN-MAX",
                         help="with --ray: number of scoring actors, or an autoscaling range (default: 1 up to "
                              "what the cluster's CPUs/GPUs allow)")
    cluster.add_argument("--cpus-per-actor", type=positive_float, metavar="X",
                         help="with --ray: CPUs (and torch threads) per actor (default: the smallest node's CPUs, at "
                              "most 4; 1 with --gpus-per-actor)")
    cluster.add_argument("--gpus-per-actor", type=positive_float, metavar="X",
                         help="with --ray: GPUs per actor; 0.25 packs four actors onto each GPU (default: none)")
    return parser


class PrintInfo(argparse.Action):
    """``--info``: prints :func:`info_lines` and exits, like ``--version`` (no other argument is needed)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: Optional[str] = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace, values, option_string=None) -> None:
        from .runtime_info import info_lines

        print("\n".join(info_lines()))  # to standard output, as --version prints
        parser.exit()


def _actors(text: str) -> Union[int, Tuple[int, int]]:
    try:
        return parse_actors(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _ray_address_first(argv: Sequence[str]) -> List[str]:
    """``--ray`` takes an optional ADDRESS; a bare ``--ray`` followed by a PATH must not swallow that PATH."""
    argv = list(argv)
    for index, arg in enumerate(argv[:-1]):
        if arg == "--ray" and not argv[index + 1].startswith("-") and not is_ray_address(argv[index + 1]):
            argv[index] = "--ray=local"
    return argv


def parse_shard(text: str) -> Tuple[int, int]:
    """Parses ``K/N`` for ``--shard``.

    Raises:
        argparse.ArgumentTypeError: Not two integers with ``1 <= K <= N``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(match[1]), int(match[2])


# ---------------------------------------------------------------------------------------------------------------
# Finding images


def in_shard(path: str, shard: int, shards: int) -> bool:
    """Whether ``path`` belongs to shard ``shard`` (1-based) of ``shards``.

    The shard is a stable hash of the path string as listed, so it does not depend on the other inputs, their order,
    the machine or the Python version; every path falls in exactly one shard.
    """
    digest = hashlib.blake2b(os.fsencode(path), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards == shard - 1


# ---------------------------------------------------------------------------------------------------------------
# Main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-score``.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 all images scored, 1 some failed, 2 usage error, 3 system error, 130 interrupted.
    """
    args = build_parser().parse_args(_ray_address_first(sys.argv[1:] if argv is None else argv))
    return run(PROG, lambda: _run(args), interrupted="rows written so far are kept", quiet=args.quiet)


def _run(args: argparse.Namespace) -> int:
    fmt = _output_format(args)
    lock = _lock_output(args.output)
    try:
        return _run_locked(args, fmt)
    finally:
        if lock is not None:
            lock.release()


def _lock_output(path: Optional[str]) -> Optional[OutputLock]:
    """Checks that ``-o`` can be written and takes its lock: before the model loads, before ``--resume`` reads it."""
    if path is None or _is_special_file(path):
        return None  # a device or FIFO (-o /dev/stdout): nothing to check or keep whole
    check_writable(path, "-o")
    lock = OutputLock(path, PROG)
    try:
        lock.acquire()
    except OutputBusyError as error:
        raise UsageError(f"-o {error}; the file is left unchanged") from None
    except OSError as error:
        raise UsageError(f"-o {path}: cannot lock it: {error.strerror or error}") from None
    return lock


def _is_special_file(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class _Inputs(NamedTuple):
    """What a run scores: image files, or the entries of tar shards and Parquet files (docs/datasets.md)."""

    paths: Optional[List[str]]  # the image files (None for entries), before --resume
    plan: Optional[SourcePlan]  # the shards and Parquet files, read entry by entry
    extra: Tuple[str, ...]  # the columns after the base ones: mos, percentile, or key and --id-col values
    map_files: Dict[str, str]


def _run_locked(args: argparse.Namespace, fmt: str) -> int:
    apply_offline(args)
    prompts = read_prompts(args.prompts) if args.prompts else None
    inputs = _inputs(args)
    try:
        finished, has_content = prepare_resume(args.output, fmt, inputs.extra) if args.resume else (set(), False)
    except OutputFileError as error:
        raise UsageError(str(error)) from None
    paths = inputs.paths
    if finished:
        if paths is not None:
            paths = [path for path in paths if path not in finished]
        if not args.quiet:
            left = "" if paths is None else f", {len(paths)} to score"
            say(PROG, f"resuming: {len(finished)} images already in {args.output}{left}")
    rows, maps = _scored_rows(args, prompts, inputs, paths, finished)
    if args.report:
        from .report import RowCollector

        rows = collected = RowCollector(rows)
    try:
        stream = None if fmt == "parquet" else open_output(args.output, append=args.resume)
    except OutputFileError as error:
        raise UsageError(str(error)) from None
    own_file = stream is not None and stream is not sys.stdout
    try:
        if stream is None:
            writer = _parquet_writer(args.output, inputs.extra)
        else:
            width = 40 if paths is None else max(map(len, paths), default=4)
            writer = RowWriter(stream, fmt, header=not has_content, path_width=width, extra_columns=inputs.extra,
                               name=args.output or "standard output")
        scores, failures = score_and_write(rows, None if paths is None else len(paths), args, writer, maps)
    except BaseException:
        if own_file:
            try:
                stream.close()
            except OSError:  # the failure being reported is the first one; this is its echo
                pass
        raise
    if own_file:
        close_output(stream, args.output)
    if args.summary and sys.stderr is not None:
        print(summary(scores, failures), file=sys.stderr)
    report_ok = True
    if args.report:
        # After --resume the file holds the earlier runs' rows too.
        from .report.publish import publish_for_command

        report_ok = publish_for_command(args.output if args.resume else collected.rows, args.report,
                                        say=lambda message: say(PROG, message), quiet=args.quiet,
                                        maps=inputs.map_files, workers=args.workers,
                                        note=f"{len(paths)} images scored by {PROG}")
    return EXIT_FAILURES if failures or (maps and maps.failures) or not report_ok else EXIT_OK


def _inputs(args: argparse.Namespace) -> _Inputs:
    """The inputs the PATHs name, sharded with ``--shard``, after refusing the options they cannot take."""
    try:  # tar shards and Parquet files are read entry by entry, with extra columns
        plan = plan_sources(args.paths, recursive=args.recursive, hidden=args.hidden, image_col=args.image_col,
                            id_cols=args.id_col)
    except (InputNotFoundError, SourceError) as error:
        raise UsageError(str(error)) from None
    if plan is not None:
        if args.maps or args.report or args.calibration:
            raise UsageError("--maps, --report and --calibration take image files, not tar shards or Parquet files")
        if args.shard:  # whole shard and Parquet files, so each machine streams its own files
            plan = plan.select(lambda path: in_shard(path, *args.shard))
        try:
            return _Inputs(None, plan, tuple(plan.extra_columns()), {})
        except SourceError as error:
            raise UsageError(str(error)) from None
    paths = _find(args)
    # From every path found, before sharding and resuming, so that each run lays maps out the same way.
    map_files = mirrored_paths(paths, args.maps, ".png") if args.maps else {}
    if args.maps and os.path.exists(args.maps) and not os.path.isdir(args.maps):
        raise UsageError(f"--maps {args.maps}: not a folder")
    if args.shard:
        paths = [path for path in paths if in_shard(path, *args.shard)]
    return _Inputs(paths, None, CALIBRATED_COLUMNS if args.calibration else (), map_files)


def _scored_rows(args: argparse.Namespace, prompts: Optional[List[Tuple[str, str]]], inputs: _Inputs,
                 paths: Optional[List[str]], finished: Set[str]) -> Tuple[Iterable[ScoreResult], Optional[MapWriter]]:
    """The rows as they are scored (on Ray, or by a local scorer that also draws the ``--maps``)."""
    if args.ray is not None:
        return _ray_rows(args, paths if inputs.plan is None else inputs.plan, prompts, finished), None
    scorer = load_scorer(args, prompts)
    if args.quiet or sys.stderr is None:
        silence_libtiff()
    if inputs.plan is not None:
        from .sources import score_entries

        return score_entries(scorer, inputs.plan.entries(skip=finished), workers=args.workers), None
    rows = scorer.iter_scores(paths, workers=args.workers, read_timeout=args.read_timeout)
    return rows, MapWriter(scorer, inputs.map_files, args.map_method) if args.maps else None


def _find(args: argparse.Namespace) -> List[str]:
    """The images the PATHs name; with ``--ray``, object-store URIs are listed too."""
    try:
        if args.ray is not None:
            from .ray_scoring import find_inputs

            paths = find_inputs(args.paths, recursive=args.recursive, hidden=args.hidden)
        else:
            paths = find_images(args.paths, recursive=args.recursive, hidden=args.hidden)
    except InputNotFoundError as error:
        raise UsageError(str(error)) from None
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.paths)}")
    return paths


def _output_format(args: argparse.Namespace) -> str:
    """The output format, after checking the options that depend on it."""
    if args.min_score is not None and args.max_score is not None and args.min_score > args.max_score:
        raise UsageError(f"--min-score {args.min_score} is above --max-score {args.max_score}")
    if args.reverse and not args.sort:
        raise UsageError("--reverse needs --sort")
    if args.ray is None and (args.actors or args.cpus_per_actor or args.gpus_per_actor):
        raise UsageError("--actors, --cpus-per-actor and --gpus-per-actor need --ray")
    if args.ray is not None and args.maps:
        raise UsageError("--maps cannot be combined with --ray: maps are drawn by a local scorer")
    if args.calibration and (args.ray is not None or args.resume):
        raise UsageError(f"--calibration cannot be combined with {'--ray' if args.ray is not None else '--resume'}")
    if args.output is None and sys.stdout is None:
        raise UsageError("standard output is closed; write the rows to a file with -o FILE")
    if args.resume and args.output and os.path.isdir(args.output):
        raise UsageError(f"--resume -o {args.output}: is a folder; --resume appends to a csv or jsonl file")
    fmt = choose_format(args.format, args.output, sys.stdout is not None and sys.stdout.isatty())
    if fmt == "parquet" and not args.output:
        raise UsageError("parquet output needs -o FILE.parquet or -o FOLDER/")
    # Before any file is touched or the model loaded (a missing extra is a usage error).
    if args.ray is not None:
        from .ray_scoring import require_ray

        require_ray("--ray")
    if fmt == "parquet":
        from .parquet_rows import require_pyarrow

        require_pyarrow()
    if args.resume:
        if not args.output:
            raise UsageError("--resume needs -o FILE")
        if fmt not in RESUMABLE_FORMATS:
            raise UsageError(f"--resume works with csv and jsonl output, not {fmt}")
        if args.sort:
            raise UsageError("--resume cannot be combined with --sort (sorted rows are only written at the end)")
    return fmt


def _ray_rows(args: argparse.Namespace, source: Union[Sequence[str], SourcePlan],
             prompts: Optional[List[Tuple[str, str]]], finished: Set[str]) -> Iterable[ScoreResult]:
    """Rows scored on a Ray cluster, as the actors finish them (in no particular order)."""
    rows = ray_rows(source, args.ray, quiet=args.quiet, threads=args.threads, workers=args.workers,
                    concurrency=args.actors, num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor or 0,
                    skip=finished, **scorer_options(args, prompts))
    try:
        yield from rows
    except RayJobError as error:
        raise UsageError(str(error)) from error


def _parquet_writer(path: str, extra_columns: Sequence[str]) -> ParquetRowWriter:
    try:
        from .parquet_rows import ParquetRowWriter

        return ParquetRowWriter(path, extra_columns)
    except OSError as error:
        raise UsageError(f"-o {path}: {error.strerror or error}") from error
