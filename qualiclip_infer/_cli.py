"""What the three commands (``qualiclip-score``, ``qualiclip-eval``, ``qualiclip-train``) share: the exit statuses,
one-line errors, the wrapper that turns failures into them, number parsers, the prompt file, the model options and
the scorer they build.

Torch-free: ``--help`` and usage errors of every command stay instant. torch comes in only with :func:`load_scorer`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import warnings
from typing import TYPE_CHECKING, Callable, List, NoReturn, Optional, Sequence, Tuple, Type

from .allocator import keep_freed_memory
from .constants import BACKENDS, DEFAULT_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS, PRECISIONS, default_workers
from .deadline_pool import current_label
from .extras import MissingExtraError
from .hub import go_offline
from .messages import first_line
from .presets import DEFAULT_MODEL, PRESETS
from .streams import reserve_standard_descriptors

if TYPE_CHECKING:
    from .scorer import QualityScorer

EXIT_OK = 0
EXIT_FAILURES = 1  # some inputs could not be scored (qualiclip-score), or training failed (qualiclip-train)
EXIT_USAGE = 2
EXIT_SYSTEM = 3  # the machine failed: disk full, output folder gone, I/O error
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = {
    EXIT_USAGE: "2 usage error (bad option or input file, model unavailable; one line on standard error)",
    EXIT_SYSTEM: "3 system error while writing (disk full, I/O error; one line naming the file)",
    EXIT_INTERRUPTED: "130 interrupted (what was written so far is kept)",
}


class UsageError(Exception):
    """A problem with the command line or its inputs; reported on one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """Reports a bad argument on one line naming the option (no usage block) and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        say(self.prog, f"error: {message} (see {self.prog} --help)")
        self.exit(EXIT_USAGE)


def exit_status_epilog(first: str) -> str:
    """The ``Exit status:`` paragraph of a command's help, after its own ``0``/``1`` meanings."""
    return f"Exit status: {first}, {', '.join(EXIT_STATUS_HELP.values())}."


def say(prog: str, message: str) -> None:
    """Writes ``prog: message`` to standard error, if there is one (a closed stderr makes every message a no-op)."""
    if sys.stderr is None:
        return
    try:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed or broken under us: nowhere left to report
        pass


def run(prog: str, body: Callable[[], int], *, usage_errors: Tuple[Type[BaseException], ...] = (),
        interrupted: str = "what was written so far is kept", quiet: bool = False) -> int:
    """Runs a command's body and turns every failure a user can cause or meet into one line and an exit status.

    Args:
        prog: The command's name, for the messages.
        body: The command; returns its exit status.
        usage_errors: Exception types (besides :class:`UsageError` and a missing extra) that mean bad input.
        interrupted: What the Ctrl-C message says is kept.
        quiet: Drop every warning (``-q``); else each is one line, naming the input being read when a reading
            thread raised it (Pillow's warnings about a file do not name it).

    Returns:
        The exit status (see :data:`EXIT_STATUS_HELP`).
    """
    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        label = current_label()
        text = " ".join(str(message).split())
        say(prog, f"{label}: warning: {text}" if label else f"warning: {text}")

    reserve_standard_descriptors()  # before the command opens a file that could take a closed one's number
    keep_freed_memory()  # 4-8% of a CPU run (allocator.py)
    try:
        with warnings.catch_warnings():
            if quiet or sys.stderr is None:
                warnings.simplefilter("ignore")
            else:
                # Each file's warning, not only the first per line of Pillow's code.
                warnings.filterwarnings("always", module=r"PIL(\.|$)")
                warnings.showwarning = show_warning
            return body()
    except (UsageError, MissingExtraError, *usage_errors) as error:
        say(prog, f"error: {first_line(error)}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        say(prog, f"interrupted; {interrupted}")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly. Pointing stdout at the null device is the Python
        # documentation's idiom (signal module, "Note on SIGPIPE") against a second BrokenPipeError when the
        # interpreter flushes it at exit; with every row flushed as it is written, CPython 3.11 drops what a failed
        # flush held, so no test can see the difference today.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return EXIT_FAILURES
    except OSError as error:
        say(prog, f"error: {os_error_line(error)}")
        return EXIT_SYSTEM


def os_error_line(error: OSError) -> str:
    """``FILE: cause`` for an operating-system error."""
    cause = error.strerror or first_line(error)
    return f"{error.filename}: {cause}" if error.filename else cause


def check_writable(path: str, option: str) -> None:
    """Checks that a file can be created next to ``path`` (its folder created if needed), without touching ``path``.

    Every command checks its outputs this way before it loads a model or trains a step.

    Raises:
        UsageError: The folder cannot be created or written; the message names the option and the cause.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".qualiclip-write-check-"):
            pass
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write there: {error.strerror or first_line(error)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Numbers


def number(kind: Callable[[str], float], minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number of ``kind`` (int or float) at least (or, not ``inclusive``, above) ``minimum``."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}") from None
        if not math.isfinite(value) or not (value >= minimum if inclusive else value > minimum):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"  # argparse names the type in some messages
    return parse


positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, inclusive=False)


def finite_float(text: str) -> float:
    """An argparse type: any finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Prompts and the model


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
    for number_, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        positive, bar, negative = (part.strip() for part in line.partition("|"))
        if not (bar and positive and negative) or "|" in negative:
            raise UsageError(f"{path}:{number_}: expected 'positive prompt | negative prompt', got {line!r}")
        pairs.append((positive, negative))
    if not pairs:
        raise UsageError(f"{path}: no prompt pairs; write one 'positive | negative' pair per line")
    return pairs


def add_scoring_options(parser: argparse.ArgumentParser, *, several_weights: bool = False) -> None:
    """Adds the options that choose and run the model, shared by ``qualiclip-score`` and ``qualiclip-eval``.

    Args:
        parser: The parser to extend.
        several_weights: ``--weights`` may be repeated (a list), for commands that compare models.
    """
    model = add_model_options(parser, several_weights=several_weights)
    _add_run_options(model)


def add_model_options(parser: argparse.ArgumentParser, *, several_weights: bool = False) -> argparse._ArgumentGroup:
    """Adds the options that choose the model and its weights (``qualiclip-export`` has these only).

    Args:
        parser: The parser to extend.
        several_weights: ``--weights`` may be repeated (a list), for commands that compare models.

    Returns:
        The option group, for more options.
    """
    names = list(PRESETS)
    model = parser.add_argument_group("model")
    if several_weights:
        model.add_argument("--weights", metavar="PATH|hf-hub:ORG/REPO/FILE", action="append",
                           help="checkpoint (default: the official QualiCLIP.pth from the Hugging Face Hub); "
                                "repeat to compare several (paired with the --model options by position, or one "
                                "for all of them)")
    else:
        model.add_argument("--model", default=DEFAULT_MODEL, choices=names, metavar="NAME",
                           help=f"{DEFAULT_MODEL} (default: the official model), "
                                f"{', '.join(n for n in names if n != DEFAULT_MODEL)}; the qualiclip+ and clipiqa+ "
                                f"models were fitted to human scores (see docs/presets.md)")
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
    model.add_argument("--prompts", metavar="FILE",
                       help="custom prompt pairs, one 'positive | negative' per line ('#' starts a comment line)")
    model.add_argument("--logit-scale", type=positive_float, metavar="X",
                       help="scale of the cosine similarities (default: the model's; 100 for qualiclip)")
    model.add_argument("--threads", type=positive_int, metavar="N",
                       help="torch CPU threads (default: torch's choice, one per core); lower it on a shared "
                            "machine, where threads waiting for each other at every layer slow everything down")
    return model


def _add_run_options(model: argparse._ArgumentGroup) -> None:
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    model.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (exact, default) or fp16/bf16 autocast")
    model.add_argument("--backend", choices=BACKENDS, default="torch",
                       help="what runs the image tower: torch (default), or openvino / onnxruntime on the CPU (same "
                            "scores to 1e-5 in fp32; openvino also bf16); see docs/backends-and-export.md")
    model.add_argument("--batch-size", type=positive_int, metavar="N",
                       help=f"most images per batch; only equal sizes share one, and on the CPU at most 0.5 Mpx "
                            f"(default: {DEFAULT_BATCH_SIZE})")
    model.add_argument("--max-pixels", type=positive_float, metavar="MPX",
                       help=f"refuse images over MPX megapixels (an error row) instead of risking running out of "
                            f"memory; activations cost about 200 MiB per megapixel in fp32 "
                            f"(default: {DEFAULT_MAX_IMAGE_PIXELS / 1e6:g})")
    model.add_argument("--workers", type=positive_int, default=default_workers(), metavar="N",
                       help="image decoding threads (default: number of available CPUs, at most 8)")


def apply_offline(args: argparse.Namespace) -> None:
    """Honours ``--offline`` before anything imports huggingface_hub."""
    if args.offline:
        go_offline()


def scorer_options(args: argparse.Namespace, prompts: Optional[Sequence[Tuple[str, str]]]) -> dict:
    """The :class:`QualityScorer` arguments the options of :func:`add_scoring_options` (or only
    :func:`add_model_options`) ask for; unset ones are left out."""
    backend, max_pixels = getattr(args, "backend", "torch"), getattr(args, "max_pixels", None)
    options = dict(weights=args.weights, revision=args.revision, device=getattr(args, "device", None),
                   precision=getattr(args, "precision", None), prompts=prompts,
                   batch_size=getattr(args, "batch_size", None), logit_scale=args.logit_scale,
                   backend=None if backend == "torch" else backend,
                   max_image_pixels=None if max_pixels is None else round(max_pixels * 1e6),
                   model=getattr(args, "model", None), prompt_weights=getattr(args, "prompt_weights", None),
                   prompt_revision=getattr(args, "prompt_revision", None),
                   calibration=getattr(args, "calibration", None))
    return {"local_files_only": args.offline, **{k: v for k, v in options.items() if v is not None}}


def load_scorer(args: argparse.Namespace, prompts: Optional[Sequence[Tuple[str, str]]]) -> QualityScorer:
    """The scorer the options ask for, with ``--threads`` applied.

    Raises:
        UsageError: The model cannot be loaded (weights unavailable, bad checkpoint, unknown device...).
    """
    import warnings

    import torch
    from PIL import Image

    from .calibration import CalibrationError
    from .scorer import QualityScorer

    # Pillow warns about images over 89 Mpx; the scorer's own pixel limit decides what is scored, row by row.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return QualityScorer(**scorer_options(args, prompts))
    except CalibrationError as error:  # the calibration file is the problem, not the model
        raise UsageError(first_line(error)) from None
    except Exception as error:  # weights come from files and the network, which fail in many ways: one line each
        raise UsageError(f"cannot load the model: {first_line(error)}") from error
