"""``qualiclip-export``: writes a QualiCLIP model as a self-contained ONNX file, optionally verified with ONNX Runtime.

Example::

    qualiclip-export qualiclip.onnx --verify
    qualiclip-export plus.onnx --model qualiclip+koniq --weights QualiCLIP.pth --prompt-weights QualiCLIP+_koniq.pth
    qualiclip-export --check qualiclip.onnx          # verify a file written before, against the same model options

torch and the runtimes are imported after the arguments are parsed, so ``--help`` and usage errors are instant.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Optional, Sequence

from ._cli import (EXIT_FAILURES, EXIT_OK, Parser, UsageError, add_model_options, apply_offline, check_writable,
                   exit_status_epilog, load_scorer, read_prompts, run, say)

if TYPE_CHECKING:
    from .scorer import QualityScorer

PROG = "qualiclip-export"


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-export`` argument parser."""
    parser = Parser(
        prog=PROG,
        description="Write a QualiCLIP model as ONNX: input 'images' float32 Nx3xHxW in [0, 1] (normalisation "
                    "inside; N, H, W dynamic, H and W >= 32), output 'scores' (N). The model, its weights file and "
                    "SHA-256, prompts, logit scale and the weights' licence are stored in the file's metadata.",
        epilog=exit_status_epilog("0 written (and verified if asked), 1 verification failed"))
    parser.add_argument("output", nargs="?", metavar="OUTPUT.onnx", help="file to write")
    parser.add_argument("--verify", action="store_true",
                        help="after writing, score generated images at 224x224, 320x192 and 97x131 with ONNX "
                             "Runtime and torch; any difference over 1e-5 removes the file and exits with 1")
    parser.add_argument("--check", metavar="FILE.onnx",
                        help="only verify an existing FILE against the model the options name (no export)")
    add_model_options(parser)
    # The export runs the network once on the CPU in fp32: what it traces is the exact model.
    parser.set_defaults(device="cpu", precision="fp32")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-export``.

    Returns:
        0 written (and verified if asked), 1 verification failed, 2 usage error, 3 system error, 130 interrupted.
    """
    args = build_parser().parse_args(argv)
    return run(PROG, lambda: _run(args), interrupted="no file was written")


def _run(args: argparse.Namespace) -> int:
    if (args.output is None) == (args.check is None):
        raise UsageError("give either OUTPUT.onnx to write, or --check FILE.onnx")
    if args.check and args.verify:
        raise UsageError("--verify applies to a file being written; --check verifies an existing one")
    if args.check and not os.path.isfile(args.check):
        raise UsageError(f"--check {args.check}: no such file")
    if args.output:
        check_writable(args.output, "OUTPUT")
    apply_offline(args)
    prompts = read_prompts(args.prompts) if args.prompts else None
    from .export import export_onnx

    scorer = load_scorer(args, prompts)
    if args.check:
        return _verify(args.check, scorer, remove=False)
    metadata = export_onnx(scorer, args.output)
    size = os.path.getsize(args.output) / 2**20
    say(PROG, f"wrote {args.output} ({size:.0f} MiB): {metadata['qualiclip.preset']}, weights "
              f"{metadata['qualiclip.weights_file']} (sha256 {metadata['qualiclip.weights_sha256'][:12]}...), "
              f"licence {metadata['qualiclip.weights_licence']}")
    if args.verify:
        return _verify(args.output, scorer, remove=True)
    return EXIT_OK


def _verify(path: str, scorer: "QualityScorer", *, remove: bool) -> int:
    """Verifies ``path`` against ``scorer``; a failed verification removes a just-written file (``remove``)."""
    from .export import VERIFY_TOLERANCE, ExportVerificationError, verify_onnx

    try:
        difference = verify_onnx(path, scorer)
    except ExportVerificationError as error:
        if remove:
            os.remove(path)
        say(PROG, f"verification failed: {error}" + (f"; {path} removed" if remove else ""))
        return EXIT_FAILURES
    say(PROG, f"verified {path}: largest score difference to torch {difference:.1e} (at most "
              f"{VERIFY_TOLERANCE:.0e} allowed)")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
