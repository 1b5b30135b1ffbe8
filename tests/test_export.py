"""``qualiclip-export``: a self-contained ONNX file that ONNX Runtime and OpenVINO score as torch does."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from helpers_backends import CUSTOM_PROMPTS, corrupt_onnx, image_batches, scale_largest_weight, write_plus_prompt_file

import qualiclip_infer.export as export
from qualiclip_infer import QualityScorer, __version__
from qualiclip_infer.export_cli import main as export_main

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def plus_prompts(tmp_path_factory):
    return write_plus_prompt_file(tmp_path_factory.mktemp("plus") / "QualiCLIP+_koniq.pth")


def _onnxruntime_scores(path, batch):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["scores"], {"images": batch.numpy()})[0])


@pytest.mark.parametrize("variant", ["qualiclip", "qualiclip+koniq", "custom"])
def test_exported_file_scores_images_in_0_1_as_torch_does(tiny_checkpoint, plus_prompts, tmp_path, variant,
                                                           one_thread):
    options = {"qualiclip": {}, "custom": dict(prompts=CUSTOM_PROMPTS),
               "qualiclip+koniq": dict(model="qualiclip+koniq", prompt_weights=plus_prompts)}[variant]
    scorer = QualityScorer(tiny_checkpoint, device="cpu", **options)
    path = tmp_path / "model.onnx"
    export.export_onnx(scorer, path)
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in image_batches():  # 224x224, 320x192, 97x131: one file, every size
        expected = scorer.score_tensor(batch)
        torch.testing.assert_close(_onnxruntime_scores(path, batch), expected, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(torch.from_numpy(compiled(batch.numpy())[0]), expected, atol=TOLERANCE, rtol=0)


def test_metadata_name_the_model_its_files_and_licence(tiny_checkpoint, tmp_path):
    scorer = QualityScorer(tiny_checkpoint, device="cpu", prompts=CUSTOM_PROMPTS, logit_scale=50)
    path = tmp_path / "custom.onnx"
    export.export_onnx(scorer, path)
    model = onnx.load(str(path))
    meta = {prop.key: prop.value for prop in model.metadata_props}
    assert meta["qualiclip.preset"] == "qualiclip"
    assert meta["qualiclip.weights_file"] == "tiny.pth"
    assert meta["qualiclip.weights_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert json.loads(meta["qualiclip.prompts"]) == [list(pair) for pair in CUSTOM_PROMPTS]
    assert float(meta["qualiclip.logit_scale"]) == 50.0
    assert meta["qualiclip.package_version"] == __version__
    assert meta["qualiclip.weights_licence"].startswith("CC BY-NC 4.0")
    features = scorer.model.prompt_features.numpy().astype(np.float32).tobytes()
    assert meta["qualiclip.prompt_features_sha256"] == hashlib.sha256(features).hexdigest()
    (image,), (scores,) = model.graph.input, model.graph.output
    assert (image.name, scores.name) == ("images", "scores")
    dims = image.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert [d.dim_param for d in scores.type.tensor_type.shape.dim] == ["batch"]


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "qualiclip_infer.export_cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_export_command_verifies_and_check_refuses_a_corrupted_file(tiny_checkpoint, tmp_path):
    path = tmp_path / "q.onnx"
    run = _run(path, "--weights", tiny_checkpoint, "--verify", "--threads", "1")
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr and "verified" in run.stderr and "Traceback" not in run.stderr
    corrupted = corrupt_onnx(path, tmp_path / "corrupted.onnx")
    run = _run("--check", corrupted, "--weights", tiny_checkpoint, "--threads", "1")
    assert run.returncode == 1, run.stderr
    assert "verification failed" in run.stderr and "differ from torch's" in run.stderr
    assert "Traceback" not in run.stderr
    assert corrupted.exists()  # --check never removes what it did not write


def test_verify_refuses_another_model_and_a_file_that_is_not_onnx(tiny_checkpoint, tmp_path, one_thread):
    path = tmp_path / "q.onnx"
    export.export_onnx(QualityScorer(tiny_checkpoint, device="cpu"), path)
    assert export.verify_onnx(path, QualityScorer(tiny_checkpoint, device="cpu")) <= TOLERANCE
    with pytest.raises(export.ExportVerificationError, match="differ from torch's"):
        export.verify_onnx(path, QualityScorer(tiny_checkpoint, device="cpu", logit_scale=50))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    with pytest.raises(export.ExportVerificationError, match="cannot load it"):
        export.verify_onnx(garbage, QualityScorer(tiny_checkpoint, device="cpu"))


def test_verify_removes_a_corrupted_export_and_fails(tiny_checkpoint, tmp_path, monkeypatch, capsys, one_thread):
    real_graph = export.onnx_bytes

    def corrupted_graph(*args):
        model = onnx.load_from_string(real_graph(*args))
        scale_largest_weight(model)
        return model.SerializeToString()

    monkeypatch.setattr(export, "onnx_bytes", corrupted_graph)
    path = tmp_path / "bad.onnx"
    assert export_main([str(path), "--weights", str(tiny_checkpoint), "--verify"]) == 1
    assert "verification failed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # neither the file nor a partial one is left


def test_verify_holds_the_file_to_1e_5_of_torch(tiny_checkpoint, tmp_path, monkeypatch, one_thread):
    scorer = QualityScorer(tiny_checkpoint, device="cpu")
    path = tmp_path / "model.onnx"
    export.export_onnx(scorer, path)
    assert export.verify_onnx(path, scorer) < 1e-6
    real_head = scorer.model.score_features
    for shift, refused in ((5e-6, False), (3e-5, True)):  # torch's scores moved, the file's not
        monkeypatch.setattr(scorer.model, "score_features", lambda features: real_head(features) + shift)
        if refused:
            with pytest.raises(export.ExportVerificationError, match=r"differ from torch's by 3\.0\de-05"):
                export.verify_onnx(path, scorer)
        else:
            assert export.verify_onnx(path, scorer) == pytest.approx(shift, abs=1e-6)


@pytest.mark.parametrize("args, message", [
    ([], "give either OUTPUT.onnx"),
    (["x.onnx", "--check", "y.onnx"], "give either OUTPUT.onnx"),
    (["--check", "missing.onnx"], "no such file"),
    (["x.onnx", "--weights", "missing.pth"], "cannot load the model"),
])
def test_usage_errors_are_one_line(tmp_path, args, message):
    run = subprocess.run([sys.executable, "-m", "qualiclip_infer.export_cli", *args, "--offline"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
