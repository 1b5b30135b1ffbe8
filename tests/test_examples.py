"""``examples/*.py`` run as a user runs them (a subprocess), on tiny models and small inputs, and print what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import natural_image, save_image
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 300


def _run(script: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_improve_with_qualiclip_loss(tiny_checkpoint, tmp_path):
    photo = save_image(tmp_path / "photo.png", natural_image(72, 56, 1))
    out = tmp_path / "improved.png"
    result = _run("improve_with_qualiclip_loss.py", photo, out, "--weights", tiny_checkpoint, "--steps", "20",
                  "--lr", "0.02", "--device", "cpu")
    before, after = map(float, re.search(r"score before (\S+)  after (\S+)  -> ", result.stdout).groups())
    assert after > before  # gradient descent on 1 - score raised the score
    with Image.open(out) as improved:
        assert improved.format == "PNG" and improved.size == (72, 56)


def test_finetune_tiny(tmp_path):
    result = _run("finetune_tiny.py", "--steps", "3")
    assert re.search(r"held-out level SRCC -?\d\.\d{3} -> -?\d\.\d{3} in \d+ s", result.stdout), result.stdout
    scores = re.findall(r"(random init|fine-tuned): clean (\S+)  blurred (\S+)", result.stdout)
    assert [name for name, _, _ in scores] == ["random init", "fine-tuned"]
    assert all(0 <= float(v) <= 1 for _, clean, blurred in scores for v in (clean, blurred))
    assert scores[0][1:] != scores[1][1:]  # the fine-tuned weights score differently


def test_score_on_ray(tiny_checkpoint, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'qualiclip-infer[ray]')")
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        save_image(photos / f"{seed}.png", natural_image(64, 48, seed))
    (photos / "broken.png").write_bytes(b"not a PNG")
    result = _run("score_on_ray.py", photos, "--weights", tiny_checkpoint, "--actors", "1", "-o", tmp_path / "out")
    assert re.search(r"^4 images in [\d.]+ s: 3 scored \(mean 0\.\d{4}\), 1 failed$", result.stdout, re.M), result.stdout
    assert "broken.png: not an image file Pillow can read" in result.stdout
