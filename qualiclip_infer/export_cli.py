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
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from ._errors import first_line
from .cli import _MODEL_NAMES, UsageError, _positive_float, _positive_int, read_prompts

if TYPE_CHECKING:
    from .scorer import QualityScorer

PROG = "qualiclip-export"
EXIT_OK, EXIT_VERIFY_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The ``qualiclip-export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a QualiCLIP model as ONNX: input 'images' float32 Nx3xHxW in [0, 1] (normalisation "
                    "inside; N, H, W dynamic, H and W >= 32), output 'scores' (N). The model, its weights file and "
                    "SHA-256, prompts, logit scale and the weights' licence are stored in the file's metadata.")
    parser.add_argument("output", nargs="?", metavar="OUTPUT.onnx", help="file to write")
    parser.add_argument("--verify", action="store_true",
                        help="after writing, score generated images at 224x224, 320x192 and 97x131 with ONNX "
                             "Runtime and torch; any difference over 1e-5 removes the file and exits with 1")
    parser.add_argument("--check", metavar="FILE.onnx",
                        help="only verify an existing FILE against the model the options name (no export)")
    model = parser.add_argument_group("model (as qualiclip-score)")
    model.add_argument("--model", default="qualiclip", choices=_MODEL_NAMES, metavar="NAME",
                       help=f"qualiclip (default), {', '.join(_MODEL_NAMES[1:])}")
    model.add_argument("--weights", metavar="PATH|hf-hub:ORG/REPO/FILE",
                       help="CLIP weights (default: the model's published file from the Hugging Face Hub)")
    model.add_argument("--revision", help="Hub branch, tag or commit of the weights")
    model.add_argument("--prompt-weights", metavar="PATH|hf-hub:ORG/REPO/FILE",
                       help="learned-prompt file of a qualiclip+ or clipiqa+ model")
    model.add_argument("--prompt-revision", metavar="REVISION", help="Hub branch, tag or commit of --prompt-weights")
    model.add_argument("--prompts", metavar="FILE",
                       help="custom prompt pairs, one 'positive | negative' per line; their features are baked in")
    model.add_argument("--logit-scale", type=_positive_float, metavar="X",
                       help="scale of the cosine similarities (default: the model's; 100 for qualiclip)")
    model.add_argument("--offline", action="store_true",
                       help="never use the network: the weights must be a local file or already cached")
    model.add_argument("--threads", type=_positive_int, metavar="N", help="torch CPU threads")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``qualiclip-export``.

    Returns:
        0 written (and verified if asked), 1 verification failed, 2 usage error.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if (args.output is None) == (args.check is None):
        raise UsageError("give either OUTPUT.onnx to write, or --check FILE.onnx")
    if args.check and args.verify:
        raise UsageError("--verify applies to a file being written; --check verifies an existing one")
    if args.check and not os.path.isfile(args.check):
        raise UsageError(f"--check {args.check}: no such file")
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported, which reads it once
    prompts = read_prompts(args.prompts) if args.prompts else None
    from .export import export_onnx

    scorer = _load_scorer(args, prompts)
    if args.check:
        return _verify(args.check, scorer, remove=False)
    try:
        metadata = export_onnx(scorer, args.output)
    except ImportError as error:
        raise UsageError(str(error)) from error
    except OSError as error:
        raise UsageError(f"{args.output}: cannot write: {error.strerror or first_line(error)}") from error
    size = os.path.getsize(args.output) / 2**20
    print(f"{PROG}: wrote {args.output} ({size:.0f} MiB): {metadata['qualiclip.preset']}, weights "
          f"{metadata['qualiclip.weights_file']} (sha256 {metadata['qualiclip.weights_sha256'][:12]}...), "
          f"licence {metadata['qualiclip.weights_licence']}", file=sys.stderr)
    if args.verify:
        return _verify(args.output, scorer, remove=True)
    return EXIT_OK


def _load_scorer(args: argparse.Namespace, prompts: Optional[List[Tuple[str, str]]]) -> "QualityScorer":
    import torch

    from .scorer import QualityScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(weights=args.weights, model=args.model, revision=args.revision, prompts=prompts,
                   prompt_weights=args.prompt_weights, prompt_revision=args.prompt_revision,
                   logit_scale=args.logit_scale)
    try:
        return QualityScorer(device="cpu", local_files_only=args.offline,
                             **{k: v for k, v in options.items() if v is not None})
    except Exception as error:  # weights come from files and the network, which fail in many ways: one line each
        raise UsageError(f"cannot load the model: {first_line(error)}") from error


def _verify(path: str, scorer: "QualityScorer", *, remove: bool) -> int:
    """Verifies ``path`` against ``scorer``; a failed verification removes a just-written file (``remove``)."""
    from .export import VERIFY_TOLERANCE, ExportVerificationError, verify_onnx

    try:
        difference = verify_onnx(path, scorer)
    except ImportError as error:
        raise UsageError(str(error)) from error
    except ExportVerificationError as error:
        if remove:
            os.remove(path)
        print(f"{PROG}: verification failed: {error}" + (f"; {path} removed" if remove else ""), file=sys.stderr)
        return EXIT_VERIFY_FAILED
    print(f"{PROG}: verified {path}: largest score difference to torch "
          f"{difference:.1e} (at most {VERIFY_TOLERANCE:.0e} allowed)",
          file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
