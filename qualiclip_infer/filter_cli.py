"""``qualiclip-filter``: keeps or drops samples of WebDataset shards, Parquet files or image folders by score.

Scores come from a ``qualiclip-score`` output (``--scores``) or are computed on the fly; the kept samples are
written whole to new files in ``-o FOLDER`` with a manifest (see :mod:`qualiclip_infer.curate`). Inputs are only
read. torch is imported only when scoring on the fly, after the arguments are checked.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Optional, Sequence

from ._cli import (EXIT_FAILURES, EXIT_OK, Parser, UsageError, add_scoring_options, apply_offline,
                   exit_status_epilog, finite_float, load_scorer, read_prompts, run, say)
from ._version import __version__
from .curate import SCORE_KEY, SHARD_SIZE, Rule, Saved, iter_units, match_name, read_score_file, select, \
    write_kept, write_manifest
from .files import InputNotFoundError
from .sources import SourceError, SourcePlan, plan_sources

PROG = "qualiclip-filter"


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-filter`` argument parser."""
    parser = Parser(
        prog=PROG,
        description="Keep or drop the samples of WebDataset tar shards, Parquet files of images or image folders "
                    "by QualiCLIP score, writing the kept ones to new files in -o FOLDER (inputs are never "
                    "changed). See docs/datasets.md.",
        epilog=exit_status_epilog("0 every sample scored, 1 some could not be scored (dropped, listed in "
                                  "failed.csv)"))
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="tar shards (.tar, .tar.gz; brace lists such as 'shards/{00000..00999}.tar'), Parquet "
                             "files, folders, quoted globs or URIs, as given to qualiclip-score")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-o", "--output", required=True, metavar="FOLDER",
                        help="new or empty folder for the kept samples, manifest.json and failed.csv")
    parser.add_argument("--scores", metavar="FILE",
                        help="a qualiclip-score output of these inputs (csv, jsonl, json or Parquet); default: "
                             "score on the fly with the model options below")
    keep = parser.add_argument_group("what to keep")
    keep.add_argument("--min-score", type=finite_float, metavar="X", help="keep samples scoring at least X")
    keep.add_argument("--max-score", type=finite_float, metavar="X", help="keep samples scoring at most X")
    keep.add_argument("--keep-fraction", type=finite_float, metavar="F",
                      help="keep the best F of the scored samples by rank (0.8 drops the worst 20%%): exactly "
                           "round(F x scored) samples, ties broken by input order")
    out = parser.add_argument_group("output")
    out.add_argument("--shard-size", type=int, default=SHARD_SIZE, metavar="N",
                     help=f"samples per output tar shard or rows per Parquet file (default: {SHARD_SIZE})")
    out.add_argument("--score-key", default=SCORE_KEY, metavar="NAME",
                     help=f"key of the score in each sample's .json and name of the Parquet column "
                          f"(default: {SCORE_KEY})")
    out.add_argument("--image-col", metavar="NAME", help="Parquet inputs: the column of encoded images")
    out.add_argument("--no-recursive", dest="recursive", action="store_false", help="only the top of each folder")
    out.add_argument("--hidden", action="store_true", help="include names starting with '.'")
    out.add_argument("-q", "--quiet", action="store_true", help="no summary on standard error")
    add_scoring_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-filter``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run(PROG, lambda: _run(args), interrupted="the output folder is incomplete")


def _run(args: argparse.Namespace) -> int:
    rule = Rule(args.min_score, args.max_score, args.keep_fraction)
    try:
        rule.check()
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be a positive integer, got {args.shard_size}")
    if os.path.exists(args.output) and (not os.path.isdir(args.output) or os.listdir(args.output)):
        raise UsageError(f"-o {args.output}: exists and is not an empty folder (the filter writes only new files)")
    apply_offline(args)
    try:
        plan = plan_sources(args.paths, recursive=args.recursive, hidden=args.hidden, image_col=args.image_col)
        if plan is None:  # image files only
            from .files import find_images

            plan = SourcePlan([("image", path) for path in find_images(args.paths, recursive=args.recursive,
                                                                         hidden=args.hidden)])
        if not plan.inputs:
            raise UsageError(f"no inputs found in {' '.join(args.paths)}")
        plan.extra_columns()  # checks the first Parquet file's image column before anything is scored
        saved = read_score_file(args.scores) if args.scores else _score(args, plan)
    except (InputNotFoundError, SourceError) as error:
        raise UsageError(str(error)) from None
    units = list(iter_units(plan, saved))
    selection = select([unit.score for unit in units], rule)
    os.makedirs(args.output, exist_ok=True)
    files = write_kept(plan, selection, [unit.score for unit in units], args.output, shard_size=args.shard_size,
                       score_key=args.score_key)
    manifest = {
        "inputs": [path for _, path in plan.inputs], "scores": args.scores or "scored by this run",
        "rule": {"min_score": rule.min_score, "max_score": rule.max_score, "keep_fraction": rule.keep_fraction},
        "threshold": selection.threshold, "counts": selection.counts, "score_key": args.score_key,
        "shard_size": args.shard_size, "outputs": files,
    }
    write_manifest(args.output, manifest, [unit for unit in units if unit.score is None])
    if not args.quiet:
        counts = selection.counts
        say(PROG, f"{counts['in']} in, {counts['kept']} kept, {counts['dropped']} dropped, {counts['failed']} "
                  f"failed; wrote {len(files)} files to {args.output}")
    return EXIT_FAILURES if selection.counts["failed"] else EXIT_OK


def _score(args: argparse.Namespace, plan: SourcePlan) -> Dict[str, Saved]:
    """Scores every image of the plan now; returns the results as a scores file would give them."""
    from .sources import score_entries

    scorer = load_scorer(args, read_prompts(args.prompts) if args.prompts else None)
    saved: Dict[str, Saved] = {}
    for row in score_entries(scorer, plan.entries(), workers=args.workers):
        saved[match_name(row.name)] = (row.score, row.error)
    return saved


if __name__ == "__main__":
    sys.exit(main())
