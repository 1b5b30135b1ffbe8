"""Plants each break of a list in a scratch checkout, one at a time, and runs the tests named for it.

A break is a plausible wrong implementation of a documented behaviour (a changed default, an inverted comparison, a
skipped call). ``killed`` means a named test went red on it; ``SURVIVED`` means no named test can see that bug, so
one is missing (``docs/testing.md``). The scratch checkout is a ``git worktree`` of HEAD, so commit the tests first.

Usage::

    python tools/plant_breaks.py tools/breaks.json             # every break
    python tools/plant_breaks.py tools/breaks.json -k allocator  # those whose name contains "allocator"

Each entry of the JSON list: ``{"name": ..., "file": ..., "old": ..., "new": ..., "tests": [pytest args]}``; ``old``
must occur exactly once in ``file``. Exit status 1 if any break survived.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("breaks", type=Path, help="JSON list of breaks")
    parser.add_argument("-k", default="", help="only breaks whose name contains this text")
    args = parser.parse_args()
    breaks = [entry for entry in json.loads(args.breaks.read_text()) if args.k in entry["name"]]
    with tempfile.TemporaryDirectory(prefix="plant-breaks-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), "HEAD"], check=True)
        try:
            survived = [entry["name"] for entry in breaks if not _killed(tree, entry)]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"{len(breaks) - len(survived)} of {len(breaks)} breaks killed" + (f"; survived: {survived}" * bool(survived)))
    return 1 if survived else 0


def _killed(tree: Path, entry: dict) -> bool:
    path = tree / entry["file"]
    original = path.read_text()
    if original.count(entry["old"]) != 1:
        raise SystemExit(f"{entry['name']}: {entry['file']} holds the text to break {original.count(entry['old'])} "
                         f"times, not once")
    path.write_text(original.replace(entry["old"], entry["new"]))
    try:
        # The scratch tree first on the path, also for the commands the tests start as subprocesses.
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *entry["tests"]],
                                cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    finally:
        path.write_text(original)
    lines = result.stdout.strip().splitlines()
    print(f"{'killed  ' if result.returncode else 'SURVIVED'} {entry['name']} | {lines[-1] if lines else ''}",
          flush=True)
    return result.returncode != 0


if __name__ == "__main__":
    sys.exit(main())
