"""Checkpoint loading: the official format, strict key checks, safe unpickling, and the Hub path over loopback."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import RN50_CONFIG, TINY_CONFIG, official_state, random_clip
from hub_server import FakeHub

from qualiclip_infer import (CheckpointError, QualityScorer, WeightsNotFoundError, load_checkpoint, resolve_weights,
                             save_checkpoint)
from qualiclip_infer.model import ClipArchitecture
from qualiclip_infer.weights import DEFAULT_FILENAME, DEFAULT_REPO_ID, HubFile


def _architecture_of(config: dict) -> ClipArchitecture:
    vision, text = config["vision_cfg"], config["text_cfg"]
    return ClipArchitecture(config["embed_dim"], tuple(vision["layers"]), vision["width"], vision["image_size"],
                            text["context_length"], text["vocab_size"], text["width"], text["layers"])


def test_reads_the_official_format(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint.architecture == _architecture_of(TINY_CONFIG)
    assert checkpoint.prompt_features.shape == (14, 32)
    assert "visual.attnpool.q_proj.weight" in checkpoint.clip_state
    assert set(checkpoint.image_tower_state()) == {k[7:] for k in checkpoint.clip_state if k.startswith("visual.")}


@pytest.mark.slow
def test_rn50_architecture_is_open_clips_rn50_quickgelu(rn50_checkpoint):
    checkpoint = load_checkpoint(rn50_checkpoint)
    reference = open_clip.get_model_config("RN50-quickgelu")
    assert checkpoint.architecture == _architecture_of({**reference, **RN50_CONFIG})
    assert checkpoint.architecture.open_clip_config()["vision_cfg"]["layers"] == reference["vision_cfg"]["layers"]
    assert checkpoint.architecture.vision_heads == 32


def test_openai_metadata_keys_and_absent_batch_counters_are_accepted(tmp_path):
    state = official_state(random_clip(TINY_CONFIG, 3))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["clip_model.input_resolution"] = torch.tensor(64)
    torch.save(state, tmp_path / "openai_style.pth")
    checkpoint = load_checkpoint(tmp_path / "openai_style.pth")
    assert "input_resolution" not in checkpoint.clip_state
    assert int(checkpoint.clip_state["visual.bn1.num_batches_tracked"]) == 0


def _error_for(tmp_path: Path, state) -> str:
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def good_state():
    return official_state(random_clip(TINY_CONFIG, 4))


def test_missing_key_is_named(tmp_path, good_state):
    state = dict(good_state)
    del state["clip_model.visual.layer2.0.conv2.weight"]
    assert "missing keys [clip_model.visual.layer2.0.conv2.weight]" in _error_for(tmp_path, state)


def test_unexpected_keys_are_named(tmp_path, good_state):
    assert "clip_model.visual.extra" in _error_for(tmp_path, {**good_state, "clip_model.visual.extra": torch.ones(1)})
    assert "unexpected keys [optimizer]" in _error_for(tmp_path, {**good_state, "optimizer": torch.ones(1)})


def test_wrong_shape_is_named(tmp_path, good_state):
    state = {**good_state, "clip_model.visual.attnpool.c_proj.bias": torch.zeros(31)}
    assert "clip_model.visual.attnpool.c_proj.bias (31,) != (32,)" in _error_for(tmp_path, state)


def test_prompt_features_are_required_and_shaped(tmp_path, good_state):
    state = dict(good_state)
    features = state.pop("prompts_features")
    assert "no 'prompts_features'" in _error_for(tmp_path, state)
    assert "(13, 32)" in _error_for(tmp_path, {**state, "prompts_features": features[:13]})


def test_not_a_clip_at_all(tmp_path):
    message = _error_for(tmp_path, {"prompts_features": torch.zeros(2, 4), "clip_model.weight": torch.zeros(1)})
    assert "missing key" in message


@pytest.mark.parametrize("content, cause", [
    (b"", "not a PyTorch checkpoint"),
    (b"this is not a checkpoint\n", "not a PyTorch checkpoint"),
])
def test_non_checkpoint_files(tmp_path, content, cause):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=cause) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


class _Payload:
    """Unpickling this calls ``open(sentinel, "w")``: the file's existence shows that pickled code ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_code_is_never_executed(tmp_path, good_state, zip_format):
    sentinel = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({**good_state, "prompts_features": _Payload(sentinel)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="refused to load") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="refused to load"):
        QualityScorer(path, device="cpu")
    assert not sentinel.exists()

    torch.load(path, weights_only=False)  # the unsafe loader does run it: the payload is live
    assert sentinel.exists()


def test_legacy_pickle_and_non_dict(tmp_path, good_state):
    legacy = tmp_path / "legacy.pth"
    torch.save(good_state, legacy, _use_new_zipfile_serialization=False)
    assert load_checkpoint(legacy).prompt_features.shape == (14, 32)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(listing)


def test_safetensors_and_save_round_trip(tmp_path, tiny_checkpoint):
    from safetensors.torch import save_file

    checkpoint = load_checkpoint(tiny_checkpoint)
    saved = load_checkpoint(save_checkpoint(tmp_path / "copy.pth", checkpoint.clip_state, checkpoint.prompt_features))
    assert saved.clip_state.keys() == checkpoint.clip_state.keys()
    assert all(torch.equal(saved.clip_state[k], v) for k, v in checkpoint.clip_state.items())
    tensors = {f"clip_model.{k}": v.contiguous() for k, v in checkpoint.clip_state.items()}
    save_file({**tensors, "prompts_features": checkpoint.prompt_features}, tmp_path / "w.safetensors")
    assert torch.equal(load_checkpoint(tmp_path / "w.safetensors").prompt_features, checkpoint.prompt_features)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")


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


def test_pickle_protocol_is_plain(tmp_path, tiny_checkpoint):
    """The files we write hold tensors only, so torch's weights_only loader (used by pyiqa) accepts them."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    path = save_checkpoint(tmp_path / "out.pth", checkpoint.clip_state, checkpoint.prompt_features)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not (tmp_path / "out.pth.partial").exists()
