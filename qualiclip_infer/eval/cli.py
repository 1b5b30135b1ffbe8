"""``qualiclip-eval``: how well the scores of one or more models match the human opinion scores of a dataset.

Reads a MOS file, scores its images through the scoring engine (or reads saved scores), and writes a JSON report,
a markdown table on standard output and, on request, a scatter plot. Each model's scores are saved next to the
report, so evaluating the same images with the same model again does not load the model.

torch is imported only once a model has to score something: ``--help``, usage errors and evaluations from saved
scores stay fast.
"""

from __future__ import annotations

import argparse
import copy
import os
from typing import List, Optional, Sequence

from .._cli import (EXIT_OK, EXIT_USAGE, Parser, UsageError, add_scoring_options, apply_offline, check_writable,
                    exit_status_epilog, load_scorer, non_negative_int, read_prompts, run, say,
                    scorer_options)
from .._version import __version__
from .evaluate import EvaluationError, ModelSpec, evaluate
from ..mos import DATASETS, LAYOUTS, MosFileError, read_mos
from .plot import require_matplotlib
from .scores import ScoresFileError

PROG = "qualiclip-eval"
_DELIMITERS = {"comma": ",", "tab": "\t", "semicolon": ";", "space": " "}


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-eval`` argument parser."""
    presets = ", ".join(f"{key} ({layout.title}: {layout.file_name})" for key, layout in LAYOUTS.items())
    parser = Parser(
        prog=PROG,
        description="Measure how well quality scores match human opinion scores (MOS): SRCC, KRCC, PLCC and RMSE, "
                    "raw and after a fitted logistic mapping, with bootstrap 95% confidence intervals. Writes a "
                    "JSON report, prints a markdown table, and saves each model's scores next to the report so a "
                    "second evaluation reuses them.",
        epilog=exit_status_epilog("0 report written (2 also for fewer than 3 usable images)"),
    )
    parser.add_argument("mos_file", metavar="MOS_FILE", help="CSV/TSV of image names and opinion scores")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    data = parser.add_argument_group("MOS file")
    data.add_argument("--dataset", choices=DATASETS,
                      help=f"layout of MOS_FILE: csv (generic) or {presets}; default: recognised by the file name, "
                           f"else csv")
    data.add_argument("--root", metavar="DIR",
                      help="folder the image names are relative to (default: MOS_FILE's folder; for a dataset "
                           "layout, the archive's image folder under it is found)")
    data.add_argument("--path-col", metavar="COL",
                      help="column of image names: header name or 1-based number (default: path, or 1 with "
                           "--no-header)")
    data.add_argument("--mos-col", metavar="COL",
                      help="column of opinion scores: header name or 1-based number (default: mos, or 2 with "
                           "--no-header)")
    data.add_argument("--no-header", dest="header", action="store_false", default=None,
                      help="the first line is data, not column names")
    data.add_argument("--delimiter", choices=tuple(_DELIMITERS),
                      help="field separator (default: tab if the first line has one, else comma)")
    data.add_argument("--lower-better", action="store_true",
                      help="the file holds DMOS-style values (lower = better quality); correlations are then "
                           "reported against the negated values, so positive still means agreement")

    models = parser.add_argument_group("models to evaluate")
    models.add_argument("--model", action="append", metavar="NAME",
                        help="model preset (repeat to compare several on the same images; the first is the "
                             "reference of the paired comparisons)")
    models.add_argument("--scores", action="append", metavar="FILE",
                        help="evaluate saved scores instead of (or after) running a model: any CSV qualiclip-score "
                             "wrote, or any CSV with path and score columns; repeatable")
    models.add_argument("--rescore", action="store_true",
                        help="score the images again even if saved scores exist (e.g. after overwriting a "
                             "checkpoint file in place)")
    add_scoring_options(parser, several_weights=True)

    stats = parser.add_argument_group("metrics")
    stats.add_argument("--vqeg5", action="store_true",
                       help="also fit the 5-parameter VQEG logistic (the 4-parameter one is always fitted)")
    stats.add_argument("--resamples", type=non_negative_int, default=1000, metavar="N",
                       help="bootstrap resamples for the 95%% confidence intervals (default: 1000; 0: none)")
    stats.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")

    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", required=True, metavar="REPORT.json",
                     help="the JSON report; each model's scores are saved in the same folder")
    out.add_argument("--plot", metavar="FILE.png", help="also draw a scatter plot (needs the 'eval' extra)")
    out.add_argument("--report", metavar="REPORT.html",
                     help="also write a static HTML report: scatter with the fitted curve, metrics with intervals, "
                          "the largest disagreements with the MOS, and the gallery of the first model's scores")
    out.add_argument("--save-calibration", metavar="FILE.json",
                     help="store the first model's fitted logistic and score quantiles on this dataset, for "
                          "qualiclip-score --calibration (needs --model or --weights: not for --scores alone)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress or exclusion messages")
    return parser


def model_specs(models: Optional[Sequence[str]], weights: Optional[Sequence[str]], scores: bool) -> List[ModelSpec]:
    """Pairs ``--model`` and ``--weights`` options into the models to run.

    Rules: without ``--model``, each ``--weights`` is one model of the default preset; with ``--model``, one
    ``--weights`` applies to every model, or there is one per ``--model``, paired by position. Without either, the
    default model runs, unless saved ``--scores`` are given.

    Raises:
        UsageError: Several ``--weights`` whose number differs from the number of ``--model``.
    """
    models, weights = list(models or []), list(weights or [])
    if not models:
        return [ModelSpec(weights=path) for path in weights] or ([] if scores else [ModelSpec()])
    if not weights:
        return [ModelSpec(model=name) for name in models]
    if len(weights) == 1:
        return [ModelSpec(model=name, weights=weights[0]) for name in models]
    if len(weights) != len(models):
        raise UsageError(f"{len(models)} --model and {len(weights)} --weights: give one --weights for all models, "
                         f"or one per --model (paired by position)")
    return [ModelSpec(model=name, weights=path) for name, path in zip(models, weights)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-eval``.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 report written, 2 usage error, 130 interrupted.
    """
    args = build_parser().parse_args(argv)
    return run(PROG, lambda: _run(args), usage_errors=(MosFileError, ScoresFileError, EvaluationError),
               interrupted="scores computed so far are saved", quiet=args.quiet)


def _run(args: argparse.Namespace) -> int:
    if args.plot:
        require_matplotlib()  # before an hour of scoring, not after
    check_writable(args.output, "-o")
    if args.plot:
        check_writable(args.plot, "--plot")
    apply_offline(args)
    specs = model_specs(args.model, args.weights, bool(args.scores))
    if args.save_calibration and not specs:
        raise UsageError("--save-calibration needs the model the scores are from (--model or --weights), to record "
                         "what the calibration is valid for")
    prompts = read_prompts(args.prompts) if args.prompts else None
    table = read_mos(args.mos_file, dataset=args.dataset, root=args.root, path_col=args.path_col,
                     mos_col=args.mos_col, header=args.header,
                     delimiter=_DELIMITERS[args.delimiter] if args.delimiter else None, lower_better=args.lower_better)
    report_dir = os.path.dirname(os.path.abspath(args.output))

    identities = {}  # the first model's, taken when the evaluation loads it: --save-calibration records it

    def load(spec: ModelSpec):
        single = copy.copy(args)
        single.model, single.weights = spec.model, spec.weights
        scorer = load_scorer(single, prompts)
        if args.save_calibration and spec is specs[0]:
            from ..calibration import scorer_identity

            identities[0] = scorer_identity(scorer)
        return scorer

    shared = copy.copy(args)
    shared.model = shared.weights = None
    log = (lambda message: None) if args.quiet else (lambda message: say(PROG, message))
    result = evaluate(table, models=specs, scores=args.scores or (), scorer_options=scorer_options(shared, prompts),
                      load_scorer=load, cache_dir=report_dir, rescore=args.rescore,
                      fits=("logistic4", "vqeg5") if args.vqeg5 else ("logistic4",), resamples=args.resamples,
                      seed=args.seed, workers=args.workers, log=log)
    try:
        os.makedirs(report_dir, exist_ok=True)
        result.write_json(args.output)
        if args.plot:
            result.plot(args.plot)
    except OSError as error:
        raise UsageError(f"{error.filename or args.output}: {error.strerror or error}") from error
    if args.save_calibration:
        from ..calibration import CalibrationError, evaluation_calibration, save_calibration

        if 0 not in identities:  # its scores were all saved: the model was not loaded yet
            load(specs[0])
        try:
            calibration = evaluation_calibration(result, specs[0].label, identities[0])
            save_calibration(calibration, args.save_calibration)
        except CalibrationError as error:
            raise UsageError(error) from None
        except OSError as error:
            raise UsageError(f"{args.save_calibration}: {error.strerror or error}") from error
    print(result.table())
    if args.report:
        from .report_page import build_evaluation_report

        from ..report.publish import publish_for_command

        if publish_for_command(result, args.report, say=lambda message: say(PROG, message), quiet=args.quiet,
                               build=build_evaluation_report, workers=args.workers) is None:
            return EXIT_USAGE
    return EXIT_OK
