"""``python -m qualiclip_infer.report``: the ``qualiclip-report`` command."""

from .cli import main

raise SystemExit(main())
