"""``python -m qualiclip_infer.eval``: the ``qualiclip-eval`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
