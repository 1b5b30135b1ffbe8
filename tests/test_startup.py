"""Start-up: scoring with the stored prompt features imports neither open_clip nor torchvision (seconds of import)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import natural_image, save_image

# Scores through the API, then through the command line's main(), in one fresh interpreter, and reports which of the
# text-side packages got imported on the way.
_PROBE = """
import json, sys
import numpy as np
from qualiclip_infer.scorer import QualityScorer
from qualiclip_infer import cli

weights, image, out = sys.argv[1:4]
score = QualityScorer(weights, device="cpu").score(np.full((64, 64, 3), 100, np.uint8))
status = cli.main([image, "--weights", weights, "--device", "cpu", "--format", "csv", "-q", "-o", out])
heavy = sorted(name for name in ("open_clip", "torchvision", "timm") if name in sys.modules)
print(json.dumps({"score": score, "status": status, "imported": heavy}))
"""


def test_scoring_imports_no_text_tower_packages(tiny_checkpoint, tmp_path):
    image = save_image(tmp_path / "photo.png", natural_image(64, 64))
    out = tmp_path / "scores.csv"
    result = subprocess.run([sys.executable, "-c", _PROBE, str(tiny_checkpoint), str(image), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 0 and out.read_text().startswith("path,score")
    assert report["imported"] == []
