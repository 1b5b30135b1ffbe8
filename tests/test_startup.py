"""Start-up: scoring with the stored prompt features imports neither open_clip nor torchvision (seconds of import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from helpers import natural_image, save_image

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


def test_cached_prompt_features_cost_no_hash_of_the_weights(tiny_checkpoint, tmp_path, monkeypatch):
    """With custom prompts, the weights' SHA-256 keys the feature cache; a later process reuses it after a stat."""
    import qualiclip_infer.prompts as prompts_module
    from qualiclip_infer import load_checkpoint
    from qualiclip_infer.checkpoint import Checkpoint

    weights = tmp_path / "weights.pth"
    weights.write_bytes(tiny_checkpoint.read_bytes())
    cache = tmp_path / "cache"
    hashed = []
    real_sha256 = Checkpoint.sha256
    monkeypatch.setattr(Checkpoint, "sha256", lambda self: hashed.append(self.path) or real_sha256(self))
    pairs = [("Sharp.", "Blurry.")]

    def features():
        monkeypatch.setattr(prompts_module, "_memory_cache", {})  # as in a new process
        return prompts_module.prompt_features(load_checkpoint(weights), pairs, cache_dir=cache)

    first = features()
    assert len(hashed) == 1
    assert torch.equal(features(), first) and len(hashed) == 1  # remembered: no second read of the file

    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file may have changed: hash again
    assert torch.equal(features(), first) and len(hashed) == 2
    assert torch.equal(features(), first) and len(hashed) == 2

    for memo in (cache / "weights_sha256").iterdir():
        memo.write_text("garbage")
    assert torch.equal(features(), first) and len(hashed) == 3
