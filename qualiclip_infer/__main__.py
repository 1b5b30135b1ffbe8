"""``python -m qualiclip_infer``: the ``qualiclip-score`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
