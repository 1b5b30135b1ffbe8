"""``python -m qualiclip_infer.train``: the ``qualiclip-train`` command."""

from .cli import main

raise SystemExit(main())
