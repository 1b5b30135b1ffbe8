"""Where weights come from: local paths, ``hf-hub:`` specs, and the Hub over a loopback server (download once, then
the cache alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_server import FakeHub

from qualiclip_infer import QualityScorer, WeightsNotFoundError, resolve_weights
from qualiclip_infer.hub import DEFAULT_FILENAME, DEFAULT_REPO_ID, HubFile


def test_local_paths_and_specs(tmp_path, tiny_checkpoint):
    assert resolve_weights(tiny_checkpoint) == tiny_checkpoint
    with pytest.raises(WeightsNotFoundError, match="weights file not found: .*nope.pth"):
        resolve_weights(tmp_path / "nope.pth")
    assert HubFile.parse("hf-hub:org/repo/sub/file.pth@v2") == HubFile("org/repo", "sub/file.pth", "v2")
    assert HubFile.parse("hf-hub:org/repo/file.pth") == HubFile("org/repo", "file.pth", None)
    with pytest.raises(ValueError, match="hf-hub:ORG/REPO/FILE"):
        HubFile.parse("hf-hub:org/file.pth")
    with pytest.raises(ValueError, match="pins revision"):
        resolve_weights("hf-hub:org/repo/f.pth@a", revision="b")


def _score_in_subprocess(tmp_path: Path, endpoint: str, snippet: str) -> dict:
    """Runs ``snippet`` in a fresh interpreter whose HF_ENDPOINT is ``endpoint``; it prints a JSON line."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
           "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    code = "import json, numpy as np\nfrom qualiclip_infer import *\nimage = np.full((64, 80, 3), 120, np.uint8)\n"
    result = subprocess.run([sys.executable, "-c", code + snippet], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hub_download_then_offline_from_cache(tmp_path, tiny_checkpoint):
    """The default weights come from the Hub once; later loads use the cache with no server at all."""
    files = {(DEFAULT_REPO_ID, "main", DEFAULT_FILENAME): tiny_checkpoint}
    with FakeHub(files) as hub:
        online = _score_in_subprocess(tmp_path, hub.endpoint, "s = QualityScorer(device='cpu')\n"
                                      "print(json.dumps({'score': s.score(image), 'path': str(s.weights_path)}))")
        endpoint = hub.endpoint
    methods = [(method, path) for method, path, _ in hub.requests]
    assert ("GET", f"/{DEFAULT_REPO_ID}/resolve/main/{DEFAULT_FILENAME}") in methods
    agent = {k.lower(): v for k, v in hub.requests[0][2].items()}.get("user-agent", "")
    assert "qualiclip-infer/" in agent
    assert Path(online["path"]).read_bytes() == tiny_checkpoint.read_bytes()

    # The server is gone: only the cache can answer.
    offline = _score_in_subprocess(tmp_path, endpoint, "s = QualityScorer(device='cpu', local_files_only=True)\n"
                                   "print(json.dumps({'score': s.score(image)}))")
    assert offline["score"] == online["score"]


def test_hub_revision_and_custom_repo(tmp_path, tiny_checkpoint):
    files = {("me/weights", "v1.0", "nested/q.pth"): tiny_checkpoint}
    with FakeHub(files) as hub:
        result = _score_in_subprocess(
            tmp_path, hub.endpoint,
            "s = QualityScorer('hf-hub:me/weights/nested/q.pth@v1.0', device='cpu')\n"
            "print(json.dumps({'score': s.score(image), 'path': str(s.weights_path)}))")
    assert any(path == "/me/weights/resolve/v1.0/nested/q.pth" for _, path, _ in hub.requests)
    assert Path(result["path"]).read_bytes() == tiny_checkpoint.read_bytes()
    local = QualityScorer(tiny_checkpoint, device="cpu").score(np.full((64, 80, 3), 120, np.uint8))
    assert result["score"] == pytest.approx(local, abs=1e-6)  # the Hub file scores like the local one


def test_hub_errors_are_explained(tmp_path, tiny_checkpoint):
    with FakeHub({}) as hub:
        result = _score_in_subprocess(
            tmp_path, hub.endpoint,
            "try:\n    QualityScorer('hf-hub:me/weights/missing.pth', device='cpu')\n"
            "except WeightsNotFoundError as e:\n    print(json.dumps({'error': str(e)}))")
    assert "hf-hub:me/weights/missing.pth could not be downloaded" in result["error"]
    offline = _score_in_subprocess(
        tmp_path, "http://127.0.0.1:9",
        "try:\n    QualityScorer(device='cpu', local_files_only=True)\n"
        "except WeightsNotFoundError as e:\n    print(json.dumps({'error': str(e)}))")
    assert "not in the Hugging Face cache" in offline["error"] and "HF_ENDPOINT" in offline["error"]
    assert "local checkpoint path" in offline["error"]
