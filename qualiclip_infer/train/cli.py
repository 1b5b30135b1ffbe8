"""``qualiclip-train``: look at the degradation catalogue, and fine-tune QualiCLIP on a folder of pristine images.

Exit status: 0 on success, 2 for bad arguments or inputs found before training starts (one line on stderr),
1 for a failure during training, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from .._cli import Parser, UsageError, number, read_prompts
from ..messages import first_line
from ..images import open_image, pil_to_tensor
from .degradations import DISTORTIONS, NUM_LEVELS, degradation_grid
from .inputs import DECODE_CHECKS, UP_FRONT_DECODE_BUDGET_S
from .loop import PRECISIONS, TrainConfig, Trainer, state_path, worker_message
from .losses import LossConfig
from .schedule import LR_SCHEDULES, VALIDATION_SHARE, WARMUP_SHARE

# How the help marks a hyper-parameter the paper does not publish (argparse fills in the value).
OURS = "default %(default)s (our default; not published)"
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
_LOSS_DEFAULTS = LossConfig()
_MARGIN_MEANINGS = {
    "pos": "least drop of the positive-prompt similarity from one level to any stronger one",
    "neg": "least rise of the negative-prompt similarity from one level to any stronger one",
    "cons": "difference between the two crops' similarities at one level that costs nothing",
}


def _fraction(text: str) -> float:
    value = number(float, 0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _distortions(text: str) -> Tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DISTORTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown distortion(s) {', '.join(unknown) or repr(text)}; "
                                         f"choose from: {', '.join(DISTORTIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-train`` argument parser."""
    parser = Parser(prog="qualiclip-train", description="Fine-tune QualiCLIP's image tower without human scores, "
                     "on synthetically degraded crops of pristine images.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    grid = commands.add_parser("degradations", help="draw every degradation type at every level on one image",
                               description="Draw the degradation catalogue (one row per type, one column per "
                               "level) on an image.")
    grid.add_argument("image", type=Path, help="the image to degrade")
    grid.add_argument("-o", "--out", type=Path, required=True, metavar="PATH",
                      help="where to write the grid (e.g. grid.png)")
    grid.add_argument("--tile", type=number(int, 1), default=128,
                      help="side of each tile as drawn, in pixels (default 128)")
    grid.add_argument("--crop-size", type=number(int, 32), default=_DEFAULTS["crop_size"],
                      help="side of the square the degradations are applied at, as in training, before the tile is "
                      "shrunk (or enlarged) for display; default %(default)s, fit's default crop")
    grid.add_argument("--seed", type=number(int, 0), default=0, help="seed of the random degradations (default 0)")
    grid.add_argument("--distortions", type=_distortions, default=DISTORTIONS, metavar="A,B,...",
                      help="types to draw, comma-separated (default: all 24)")

    fit = commands.add_parser("fit", help="fine-tune on a folder of pristine images",
                              description="Fine-tune QualiCLIP's image tower with its three margin ranking losses on "
                              "pairs of overlapping crops degraded at increasing levels, and write a checkpoint in "
                              "the official format.")
    fit.set_defaults(**_DEFAULTS)
    where = fit.add_argument_group("data and weights")
    where.add_argument("--images", type=Path, required=True, metavar="DIR",
                       help="folder of pristine images (searched recursively)")
    where.add_argument("--out", type=Path, required=True, metavar="PATH",
                       help="fine-tuned checkpoint to write, official QualiCLIP format (e.g. model.pth)")
    where.add_argument("--hidden", action="store_true",
                       help="also take files and folders whose names start with '.' (skipped by default, like "
                       "macOS ._photo.jpg)")
    where.add_argument("--decode-check", choices=DECODE_CHECKS,
                       help="before training, every header is read and images that are unreadable or smaller than a "
                       "crop are left out; auto also decodes every image first when that is estimated to take at "
                       f"most {UP_FRONT_DECODE_BUDGET_S:.0f} s (else, like lazy, an image that fails to decode is "
                       "skipped when met); upfront: always decode first (default %(default)s)")
    where.add_argument("--prompts", type=Path, metavar="FILE",
                       help="train against these prompt pairs, one 'positive | negative' per line (the format of "
                       "qualiclip-score --prompts); the checkpoint written stores their features (default: the "
                       "pairs stored in --init, the official seven)")
    where.add_argument("--init", metavar="WEIGHTS",
                       help="initial weights: a local official-format checkpoint or hf-hub:ORG/REPO/FILE "
                       "(default: the published QualiCLIP.pth; when resuming, the run's own initial weights)")
    where.add_argument("--crop-size", type=number(int, 32),
                       help=f"side of the square crops; images with a smaller side are left out; {OURS}")
    where.add_argument("--levels", type=number(int, 2),
                       help=f"degradation levels per crop, spread over 1..{NUM_LEVELS}; {OURS}")
    where.add_argument("--distortions", type=_distortions, metavar="A,B,...",
                       help="distortion types to draw from, one per sample, comma-separated (default: all 24)")
    where.add_argument("--workers", type=number(int, 0),
                       help="data-loading processes decoding and cropping images, at most one per CPU "
                       "(default %(default)s; 0: none)")
    where.add_argument("--seed", type=number(int, 0),
                       help="seed of the split, crops, distortion choices and degradations (default %(default)s)")

    optimisation = fit.add_argument_group("optimisation")
    optimisation.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default %(default)s)")
    optimisation.add_argument("--precision", choices=PRECISIONS,
                              help="mixed precision, CUDA only; auto: bf16 where supported, else fp16, fp32 off "
                              "CUDA (default %(default)s)")
    optimisation.add_argument("--epochs", type=number(int, 1), help=f"passes over the images; {OURS}")
    optimisation.add_argument("--steps", type=number(int, 1), help="optimiser steps to train for, overriding --epochs")
    optimisation.add_argument("--batch-size", type=number(int, 1),
                              help=f"images per micro-batch, each giving 2 crops x L levels; {OURS}")
    optimisation.add_argument("--accumulate", type=number(int, 1),
                              help="micro-batches per optimiser step (default %(default)s)")
    optimisation.add_argument("--lr", type=number(float, 0, inclusive=False),
                              help=f"AdamW peak learning rate; {OURS}")
    optimisation.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                              help=f"learning rate after the warm-up: cosine decay towards 0 at the last step, or "
                              f"constant; {OURS}")
    optimisation.add_argument("--warmup-steps", type=number(int, 0), metavar="N",
                              help=f"steps of linear learning-rate warm-up (default: {WARMUP_SHARE * 100:.0f}%% of "
                              f"the steps; our default, not published)")
    optimisation.add_argument("--weight-decay", type=number(float, 0), help=f"AdamW weight decay; {OURS}")
    optimisation.add_argument("--train-bn", action="store_true",
                              help="update BatchNorm running statistics (default: frozen; affine parameters train)")
    for term, meaning in _MARGIN_MEANINGS.items():
        optimisation.add_argument(f"--margin-{term}", type=number(float, 0),
                                  default=getattr(_LOSS_DEFAULTS, f"margin_{term}"),
                                  help=f"{meaning}, in cosine similarity; {OURS}")
    for term in _MARGIN_MEANINGS:
        optimisation.add_argument(f"--weight-{term}", type=number(float, 0),
                                  default=getattr(_LOSS_DEFAULTS, f"weight_{term}"),
                                  help=f"weight of L_{term} in the total loss; {OURS}")

    checkpoints = fit.add_argument_group("checkpoints and validation")
    checkpoints.add_argument("--checkpoint-every", type=number(int, 0), metavar="N",
                             help="write the resumable state OUT_STEM.state.pt every N steps and at the end "
                             "(default %(default)s; 0: never)")
    checkpoints.add_argument("--resume", type=Path, metavar="STATE",
                             help="continue from a state file; data settings must match the original run")
    checkpoints.add_argument("--val-fraction", type=_fraction,
                             help=f"share of the images held out for validation; {OURS}")
    checkpoints.add_argument("--val-crops", type=number(int, 0),
                             help=f"held-out crops, each degraded at every level, for the level SRCC; {OURS}")
    checkpoints.add_argument("--val-every-steps", type=number(int, 0), metavar="N",
                             help="validate every N optimiser steps, besides before and after training (0: never in "
                             "between; default: as often as keeps validation within "
                             f"{VALIDATION_SHARE * 100:.0f}%% of the training time, unless --val-every is given; "
                             "our default)")
    checkpoints.add_argument("--val-every", type=number(int, 0), metavar="N",
                             help="validate every N epochs instead (0: only before and after training; "
                             "default: by steps)")
    checkpoints.add_argument("--val-csv", type=Path, metavar="CSV",
                             help="a path,mos CSV of human scores: report SRCC and PLCC against it")
    return parser


def _write_grid(args: argparse.Namespace) -> int:
    image = pil_to_tensor(open_image(args.image))
    grid = degradation_grid(image, args.distortions, tile=args.tile, seed=args.seed, crop_size=args.crop_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height})", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> TrainConfig:
    settings = {name: getattr(args, name) for name in _DEFAULTS if name not in ("loss", "prompts", "progress")}
    loss = LossConfig(**{f"{kind}_{term}": getattr(args, f"{kind}_{term}")
                         for kind in ("margin", "weight") for term in _MARGIN_MEANINGS})
    prompts = tuple(read_prompts(str(args.prompts))) if args.prompts is not None else None
    return TrainConfig(images=args.images, out=args.out, loss=loss, prompts=prompts, **settings)


def _fit(args: argparse.Namespace, fail: Callable[[str, int], int]) -> int:
    from tqdm.auto import tqdm

    config = _config(args)
    trainer = Trainer(config, log=lambda line: tqdm.write(line, file=sys.stderr))
    validation = (f"every {trainer.val_every_steps} steps" if trainer.val_every_steps
                  else f"every {config.val_every} epochs" if config.val_every else "before and after training")
    print(f"{trainer.usable_train_images} training and {trainer.usable_val_images} validation images; "
          f"{trainer.total_steps} steps on {trainer.device}, validating {validation}", file=sys.stderr)
    try:
        trainer.run()
    except KeyboardInterrupt:
        saved = f"; resume from {state_path(config.out)}" if state_path(config.out).is_file() else ""
        return fail(f"interrupted at step {trainer.step}{saved}", 130)
    except (ValueError, FloatingPointError, OSError) as error:  # e.g. every training image broke during the run
        return fail(worker_message(error), 1)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"

    def fail(message: str, status: int) -> int:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return status

    try:
        return _write_grid(args) if args.command == "degradations" else _fit(args, fail)
    except (ValueError, OSError, UsageError) as error:  # Bad inputs found before training: images, weights, settings.
        return fail(first_line(error), 2)
