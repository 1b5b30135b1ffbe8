"""Checkpoints: the official format, strict key checks, safe unpickling, atomic writing."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from helpers import RN50_CONFIG, TINY_CONFIG, official_state, random_clip

from qualiclip_infer import CheckpointError, QualityScorer, load_checkpoint, save_checkpoint
from qualiclip_infer.model import ClipArchitecture


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


def test_pickle_protocol_is_plain(tmp_path, tiny_checkpoint):
    """The files we write hold tensors only, so torch's weights_only loader (used by pyiqa) accepts them."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    path = save_checkpoint(tmp_path / "out.pth", checkpoint.clip_state, checkpoint.prompt_features)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pth"]  # no temporary file left behind
