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
import math
import os
import re
import statistics
import sys
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ._errors import first_line
from ._version import __version__
from .files import InputNotFoundError, find_images, mirrored_paths
from .output import FORMATS, RESUMABLE_FORMATS, OutputFileError, RowWriter, choose_format, open_output, prepare_resume
from .sources import SourceError, SourcePlan, plan_sources

if TYPE_CHECKING:
    from .engine import ScoreResult
    from .scorer import QualityScorer

PROG = "qualiclip-score"
EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# The names of qualiclip_infer.presets.PRESETS, listed here so that --help needs no torch (a test keeps them equal).
_MODEL_NAMES = ("qualiclip", "qualiclip+koniq", "qualiclip+clive", "qualiclip+flive", "qualiclip+spaq", "clipiqa",
                "clipiqa+")


class UsageError(Exception):
    """A problem with the command line or its inputs; reported on one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-score`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score image quality with QualiCLIP (no reference; 0 = worst, 1 = best). "
                    "Writes one row per image: path, score, width, height, error.",
        epilog="Exit status: 0 all images scored, 1 some could not be scored, 2 usage error "
               "(bad option, no images found, weights unavailable, bad --prompts file).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image file (scored whatever its extension), folder (searched for files with an "
                             "extension Pillow can open) or quoted glob pattern ('**' recurses)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

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
    out.add_argument("--min-score", type=float, metavar="X", help="list only images scoring at least X")
    out.add_argument("--max-score", type=float, metavar="X", help="list only images scoring at most X")
    out.add_argument("--summary", action="store_true",
                     help="print count, mean, median, min, max and failures to standard error")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-file error messages")
    out.add_argument("--maps", metavar="DIR",
                     help="also draw a quality map of each scored image, a PNG under DIR named after the image "
                          "(x.jpg -> x.jpg.png), in the input's folders below the deepest one holding all inputs")
    out.add_argument("--map-method", choices=("windows", "tokens"), default="windows",
                     help="with --maps: windows (each cell the exact score of a 224x224 crop, every 112 pixels; "
                          "default) or tokens (one pass, a cell per 32x32 pixels; an approximation)")

    add_scoring_options(parser)

    cluster = parser.add_argument_group("Ray cluster (needs: pip install \"qualiclip-infer[ray]\")")
    cluster.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                         help="score on Ray: 'local' (default: a new cluster on this machine), 'auto' (the cluster "
                              "this machine belongs to), ray://HOST:PORT or HOST:PORT; PATHs may also be s3://, "
                              "gs://... URIs; --threads and --workers then apply per actor")
    cluster.add_argument("--actors", type=parse_actors, metavar="N|MIN-MAX",
                         help="with --ray: number of scoring actors, or an autoscaling range (default: 1 up to "
                              "what the cluster's CPUs/GPUs allow)")
    cluster.add_argument("--cpus-per-actor", type=_positive_float, metavar="X",
                         help="with --ray: CPUs (and torch threads) per actor (default: the smallest node's CPUs, at "
                              "most 4; 1 with --gpus-per-actor)")
    cluster.add_argument("--gpus-per-actor", type=_positive_float, metavar="X",
                         help="with --ray: GPUs per actor; 0.25 packs four actors onto each GPU (default: none)")
    return parser


def parse_actors(text: str) -> Union[int, Tuple[int, int]]:
    """Parses ``N`` or ``MIN-MAX`` for ``--actors``.

    Raises:
        argparse.ArgumentTypeError: Not a positive integer or a range ``1 <= MIN <= MAX``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < int(match[1])):
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return int(match[1]) if match[2] is None else (int(match[1]), int(match[2]))


def _ray_address_first(argv: Sequence[str]) -> List[str]:
    """``--ray`` takes an optional ADDRESS; a bare ``--ray`` followed by a PATH must not swallow that PATH."""
    argv = list(argv)
    for index, arg in enumerate(argv[:-1]):
        if arg == "--ray" and not argv[index + 1].startswith("-") and not _is_ray_address(argv[index + 1]):
            argv[index] = "--ray=local"
    return argv


def _is_ray_address(text: str) -> bool:
    return text in ("local", "auto") or text.startswith("ray://") or re.fullmatch(r"[\w.-]+:\d+", text) is not None


def add_scoring_options(parser: argparse.ArgumentParser, *, several_weights: bool = False) -> None:
    """Adds the options that choose and run the model, shared by ``qualiclip-score`` and ``qualiclip-eval``.

    Args:
        parser: The parser to extend.
        several_weights: ``--weights`` may be repeated (a list), for commands that compare models.
    """
    model = parser.add_argument_group("model")
    if several_weights:
        model.add_argument("--weights", metavar="PATH|hf-hub:ORG/REPO/FILE", action="append",
                           help="checkpoint (default: the official QualiCLIP.pth from the Hugging Face Hub); "
                                "repeat to compare several (paired with the --model options by position, or one "
                                "for all of them)")
    else:
        model.add_argument("--model", default="qualiclip", choices=_MODEL_NAMES, metavar="NAME",
                           help=f"qualiclip (default: the official model), {', '.join(_MODEL_NAMES[1:])}; the "
                                f"qualiclip+ and clipiqa+ models were fitted to human scores (see the README's Model "
                                f"presets)")
        model.add_argument("--weights", metavar="PATH|hf-hub:ORG/REPO/FILE",
                           help="CLIP weights (default: the model's published file from the Hugging Face Hub, "
                                "QualiCLIP.pth for qualiclip)")
    model.add_argument("--revision", help="Hub branch, tag or commit of the weights")
    model.add_argument("--prompt-weights", metavar="PATH|hf-hub:ORG/REPO/FILE",
                       help="learned-prompt file of a qualiclip+ or clipiqa+ model (default: its published file)"
                            + ("; it applies to every --model" if several_weights else ""))
    model.add_argument("--prompt-revision", metavar="REVISION", help="Hub branch, tag or commit of --prompt-weights")
    model.add_argument("--offline", action="store_true",
                       help="never use the network: the weights must be a local file or already cached")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    model.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                       help="fp32 (exact, default) or fp16/bf16 autocast")
    model.add_argument("--batch-size", type=_positive_int, metavar="N",
                       help="most images per batch; only equal sizes share one, and on the CPU at most 0.5 Mpx "
                            "(default: 16)")
    model.add_argument("--prompts", metavar="FILE",
                       help="custom prompt pairs, one 'positive | negative' per line ('#' starts a comment line)")
    model.add_argument("--logit-scale", type=_positive_float, metavar="X",
                       help="scale of the cosine similarities (default: the model's; 100 for qualiclip)")
    model.add_argument("--max-pixels", type=_positive_float, metavar="MPX",
                       help="refuse images over MPX megapixels (an error row) instead of risking running out of "
                            "memory; activations cost about 200 MiB per megapixel in fp32 (default: 48)")
    model.add_argument("--workers", type=_positive_int, default=min(8, os.cpu_count() or 1), metavar="N",
                       help="image decoding threads (default: number of CPUs, at most 8)")
    model.add_argument("--threads", type=_positive_int, metavar="N",
                       help="torch CPU threads (default: torch's choice, one per core); lower it on a shared "
                            "machine, where threads waiting for each other at every layer slow everything down")


def parse_shard(text: str) -> Tuple[int, int]:
    """Parses ``K/N`` for ``--shard``.

    Raises:
        argparse.ArgumentTypeError: Not two integers with ``1 <= K <= N``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(match[1]), int(match[2])


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def read_prompts(path: str) -> List[Tuple[str, str]]:
    """Reads prompt pairs from a text file: ``positive | negative`` per line; blank and ``#`` lines are skipped.

    Raises:
        UsageError: The file cannot be read, a line is not a pair, or there is no pair at all.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as error:
        raise UsageError(f"--prompts {path}: {error.strerror or first_line(error)}") from error
    except UnicodeDecodeError as error:
        raise UsageError(f"--prompts {path}: not UTF-8 text") from error
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        positive, bar, negative = (part.strip() for part in line.partition("|"))
        if not (bar and positive and negative) or "|" in negative:
            raise UsageError(f"{path}:{number}: expected 'positive prompt | negative prompt', got {line!r}")
        pairs.append((positive, negative))
    if not pairs:
        raise UsageError(f"{path}: no prompt pairs; write one 'positive | negative' pair per line")
    return pairs


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
# Output


class _Progress:
    """A tqdm bar on standard error when it is a terminal, and the per-file error messages."""

    def __init__(self, total: int, quiet: bool, bar: bool = True):
        self._quiet = quiet
        self._bar = None
        if bar and not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm  # installed with huggingface_hub, but not a promise of ours
            except ImportError:
                print(f"{PROG}: no progress bar: the 'tqdm' package is not installed", file=sys.stderr)
                return
            self._bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)

    def advance(self, row: ScoreResult) -> None:
        if row.error and not self._quiet:
            self._message(f"{PROG}: {row.name}: {row.error}")
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)


def summary(scores: Sequence[float], failures: int) -> str:
    """The ``--summary`` text: image count, failures and score statistics of one run."""
    lines = [f"images   {len(scores) + failures}", f"scored   {len(scores)}", f"failed   {failures}"]
    if scores:
        lines += [f"{name:<8} {value:.4f}" for name, value in (
            ("mean", statistics.fmean(scores)), ("median", statistics.median(scores)),
            ("min", min(scores)), ("max", max(scores)))]
    return "\n".join(lines)


def _sorted_rows(rows: List[ScoreResult], key: str, reverse: bool) -> List[ScoreResult]:
    """Rows sorted by path, or by score with unscored rows last."""
    if key == "path":
        return sorted(rows, key=lambda row: row.name, reverse=reverse)
    scored = sorted((row for row in rows if row.score is not None), key=lambda row: (row.score, row.name),
                    reverse=reverse)
    return scored + [row for row in rows if row.score is None]


# ---------------------------------------------------------------------------------------------------------------
# Main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-score``.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 all images scored, 1 some failed, 2 usage error, 130 interrupted.
    """
    args = build_parser().parse_args(_ray_address_first(sys.argv[1:] if argv is None else argv))
    try:
        return _run(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rows written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURES


def _run(args: argparse.Namespace) -> int:
    fmt = _output_format(args)
    if args.offline:
        # huggingface_hub reads this once, on import: set before anything imports it.
        os.environ["HF_HUB_OFFLINE"] = "1"
    prompts = read_prompts(args.prompts) if args.prompts else None
    try:  # tar shards and Parquet files (docs/datasets.md) are read entry by entry, with extra columns
        plan = plan_sources(args.paths, recursive=args.recursive, hidden=args.hidden, image_col=args.image_col,
                            id_cols=args.id_col)
    except (InputNotFoundError, SourceError) as error:
        raise UsageError(str(error)) from None
    if plan is not None:
        return _run_sources(args, plan, fmt, prompts)
    try:
        if args.ray is not None:
            from .distributed import find_inputs  # also lists s3://, gs://... URIs

            paths = find_inputs(args.paths, recursive=args.recursive, hidden=args.hidden)
        else:
            paths = find_images(args.paths, recursive=args.recursive, hidden=args.hidden)
    except InputNotFoundError as error:
        raise UsageError(str(error)) from None
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.paths)}")
    # From every path found, before sharding and resuming, so that each run lays maps out the same way.
    map_files = mirrored_paths(paths, args.maps, ".png") if args.maps else {}
    if args.maps and os.path.exists(args.maps) and not os.path.isdir(args.maps):
        raise UsageError(f"--maps {args.maps}: not a folder")
    if args.shard:
        paths = [path for path in paths if in_shard(path, *args.shard)]
    try:
        finished, has_content = prepare_resume(args.output, fmt) if args.resume else (set(), False)
    except OutputFileError as error:
        raise UsageError(str(error)) from None
    if finished:
        paths = [path for path in paths if path not in finished]
        if not args.quiet:
            print(f"{PROG}: resuming: {len(finished)} images already in {args.output}, {len(paths)} to score",
                  file=sys.stderr)
    maps = None
    if args.ray is not None:
        rows = _ray_rows(args, paths, prompts)
    else:
        scorer = _load_scorer(args, prompts)
        rows = scorer.iter_scores(paths, workers=args.workers)
        maps = _MapWriter(scorer, map_files, args.map_method) if args.maps else None
    try:
        stream = None if fmt == "parquet" else open_output(args.output, append=args.resume)
    except OutputFileError as error:
        raise UsageError(str(error)) from None
    try:
        if stream is None:
            writer = _parquet_writer(args.output)
        else:
            writer = RowWriter(stream, fmt, header=not has_content, path_width=max(map(len, paths), default=4))
        scores, failures = _score_and_write(rows, len(paths), args, writer, maps)
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()
    if args.summary:
        print(summary(scores, failures), file=sys.stderr)
    return EXIT_FAILURES if failures or (maps and maps.failures) else EXIT_OK


def _run_sources(args: argparse.Namespace, plan: SourcePlan, fmt: str,
                 prompts: Optional[List[Tuple[str, str]]]) -> int:
    """Scores tar shards and Parquet files (and images beside them) entry by entry; rows carry the extra columns."""
    from .sources import score_entries
    from .sources.rows import SourceParquetWriter, SourceRowWriter, prepare_source_resume

    if args.ray is not None or args.maps:
        raise UsageError("--ray and --maps take image files, not tar shards or Parquet files")
    if args.shard:  # whole shard and Parquet files, so each machine streams its own files
        plan = plan.select(lambda path: in_shard(path, *args.shard))
    try:
        extra = plan.extra_columns()
        finished, has_content = prepare_source_resume(args.output, fmt, extra) if args.resume else (set(), False)
    except (SourceError, OutputFileError) as error:
        raise UsageError(str(error)) from None
    if finished and not args.quiet:
        print(f"{PROG}: resuming: {len(finished)} images already in {args.output}", file=sys.stderr)
    rows = score_entries(_load_scorer(args, prompts), plan.entries(skip=finished), workers=args.workers)
    try:
        stream = None if fmt == "parquet" else open_output(args.output, append=args.resume)
        writer = (SourceParquetWriter(args.output, extra) if stream is None
                  else SourceRowWriter(stream, fmt, extra, header=not has_content))
    except (OutputFileError, OSError) as error:
        raise UsageError(first_line(error)) from None
    try:
        scores, failures = _score_and_write(rows, None, args, writer)
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()
    if args.summary:
        print(summary(scores, failures), file=sys.stderr)
    return EXIT_FAILURES if failures else EXIT_OK


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
    fmt = choose_format(args.format, args.output, sys.stdout.isatty())
    if fmt == "parquet" and not args.output:
        raise UsageError("parquet output needs -o FILE.parquet or -o FOLDER/")
    try:  # before any file is touched or the model loaded
        if args.ray is not None:
            from .distributed import require_ray

            require_ray("--ray")
        if fmt == "parquet":
            from .parquet_rows import require_pyarrow

            require_pyarrow()
    except ImportError as error:
        raise UsageError(str(error)) from error
    if args.resume:
        if not args.output:
            raise UsageError("--resume needs -o FILE")
        if fmt not in RESUMABLE_FORMATS:
            raise UsageError(f"--resume works with csv and jsonl output, not {fmt}")
        if args.sort:
            raise UsageError("--resume cannot be combined with --sort (sorted rows are only written at the end)")
    return fmt


def scorer_options(args: argparse.Namespace, prompts: Optional[List[Tuple[str, str]]]) -> dict:
    """The :class:`QualityScorer` arguments the options of :func:`add_scoring_options` ask for (unset ones left out)."""
    options = dict(weights=args.weights, revision=args.revision, device=args.device, precision=args.precision,
                   prompts=prompts, batch_size=args.batch_size, logit_scale=args.logit_scale,
                   max_image_pixels=None if args.max_pixels is None else round(args.max_pixels * 1e6),
                   model=getattr(args, "model", None), prompt_weights=getattr(args, "prompt_weights", None),
                   prompt_revision=getattr(args, "prompt_revision", None))
    return {"local_files_only": args.offline, **{k: v for k, v in options.items() if v is not None}}


def _load_scorer(args: argparse.Namespace, prompts: Optional[List[Tuple[str, str]]]) -> QualityScorer:
    import warnings

    import torch
    from PIL import Image

    from .scorer import QualityScorer

    # Pillow warns about images over 89 Mpx; the scorer's own pixel limit decides what is scored, row by row.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        return QualityScorer(**scorer_options(args, prompts))
    except Exception as error:  # weights come from files and the network, which fail in many ways: one line each
        raise UsageError(f"cannot load the model: {first_line(error)}") from error


def _ray_rows(args: argparse.Namespace, paths: Sequence[str],
             prompts: Optional[List[Tuple[str, str]]]) -> Iterator[ScoreResult]:
    """Rows scored on a Ray cluster, as the actors finish them (in no particular order)."""
    if not paths:  # nothing left to score: no need to start a cluster
        return
    from .distributed import connect, ray_error_cause, score_dataset
    from .results import ScoreResult  # not the engine: the driver needs no torch

    connected = False
    try:
        connected = connect(None if args.ray == "local" else args.ray, quiet=args.quiet)
        dataset = score_dataset(paths, threads=args.threads, workers=args.workers, concurrency=args.actors,
                                num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor or 0,
                                **scorer_options(args, prompts))
        index = 0
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                yield ScoreResult(index, row["path"], row["score"], row["width"], row["height"], row["error"])
                index += 1
    except (ImportError, ValueError, ConnectionError) as error:
        raise UsageError(first_line(error)) from error
    except Exception as error:
        if type(error).__module__.split(".")[0] != "ray":
            raise
        raise UsageError(f"the Ray job failed: {ray_error_cause(error)}") from error
    finally:
        if connected:  # now rather than at exit, where Ray's handlers take ~0.5 s longer (benchmarks/RESULTS.md)
            import ray

            ray.shutdown()


def _parquet_writer(path: str) -> RowWriter:
    try:
        from .parquet_rows import ParquetRowWriter

        return ParquetRowWriter(path)
    except OSError as error:
        raise UsageError(f"-o {path}: {error.strerror or first_line(error)}") from error


def _score_and_write(rows: Iterable[ScoreResult], total: int, args: argparse.Namespace, writer: RowWriter,
                     maps: Optional[_MapWriter] = None) -> Tuple[List[float], int]:
    """Reports and writes the rows as they are scored, drawing their maps; returns the scores and the failures."""
    scores: List[float] = []
    failures = 0
    held: List[ScoreResult] = []
    progress = _Progress(total, args.quiet, bar=args.ray is None)  # with --ray, Ray Data draws its own
    try:
        for row in rows:
            if maps is not None:
                maps.write(row)
            progress.advance(row)
            if row.ok:
                scores.append(row.score)
            else:
                failures += 1
            if not _in_range(row, args.min_score, args.max_score):
                continue
            if args.sort:
                held.append(row)
            else:
                writer.write([row])
        if args.sort:
            writer.write(_sorted_rows(held, args.sort, args.reverse))
    finally:
        progress.close()
        writer.close()
    return scores, failures


class _MapWriter:
    """Draws the quality map of each scored image into its ``--maps`` file; a failure is reported and counted."""

    def __init__(self, scorer: QualityScorer, files: Dict[str, str], method: str):
        self._scorer = scorer
        self._files = files
        self._method = method
        self.failures = 0

    def write(self, row: ScoreResult) -> None:
        from .engine import _cause
        from .images import to_tensor
        from .render import save_map

        if not row.ok:
            return
        target = self._files[row.name]
        try:
            image = to_tensor(row.name, row.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            save_map(image, self._scorer.quality_map(image, method=self._method), target)
        except Exception as error:  # a map is extra: the row is scored and written all the same
            self.failures += 1
            print(f"{PROG}: {row.name}: quality map not written to {target}: {_cause(error, row.name)}",
                  file=sys.stderr, flush=True)


def _in_range(row: ScoreResult, low: Optional[float], high: Optional[float]) -> bool:
    """Failed rows are always listed; scored rows when within ``[low, high]``."""
    if row.score is None:
        return True
    return (low is None or row.score >= low) and (high is None or row.score <= high)
