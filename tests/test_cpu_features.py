"""Native bf16 detection and the one-time warning when bf16 is asked for on a CPU without it."""

from __future__ import annotations

import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import qualiclip_infer.cpu_features as cpu_features
from qualiclip_infer import QualityScorer

PROC_CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not PROC_CPUINFO.exists(), reason="no /proc/cpuinfo (not Linux)")
def test_detection_agrees_with_proc_cpuinfo_and_torch():
    words = set()
    for line in PROC_CPUINFO.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            words = set(line.split(":", 1)[1].split())
            break
    expected = bool(words & {"avx512_bf16", "amx_bf16", "bf16"})
    assert cpu_features.has_native_bf16() is expected
    assert set(cpu_features.native_bf16_flags()) == words & {"avx512_bf16", "amx_bf16", "bf16"}
    if platform.machine() in ("x86_64", "AMD64"):
        import torch.cpu

        assert torch.cpu._is_avx512_bf16_supported() == ("avx512_bf16" in words)


@pytest.mark.parametrize("text, flags", [
    ("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n", ()),
    ("flags\t\t: avx512f avx512_bf16 amx_tile amx_bf16\nflags\t\t: other\n", ("avx512_bf16", "amx_bf16")),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", ("bf16",)),
    ("processor\t: 0\n", ()),
])
def test_flags_are_read_from_the_first_cpu(tmp_path, text, flags):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_features.native_bf16_flags(cpuinfo) == flags


def test_without_cpuinfo_torch_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_features, "_torch_bf16_flags", lambda: ("avx512_bf16",))
    assert cpu_features.native_bf16_flags(tmp_path / "missing") == ("avx512_bf16",)
    assert cpu_features.cpu_flags(tmp_path / "missing") is None


@pytest.fixture
def warning_not_yet_given(monkeypatch):
    monkeypatch.setattr(cpu_features, "_warned_without_bf16", False)


def test_bf16_without_native_support_warns_once(tiny_checkpoint, monkeypatch, warning_not_yet_given):
    monkeypatch.setattr(cpu_features, "has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="without native bf16") as caught:
        QualityScorer(tiny_checkpoint, device="cpu", precision="bf16")
    assert len([w for w in caught if "native bf16" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QualityScorer(tiny_checkpoint, device="cpu", precision="bf16", backend="openvino")


@pytest.mark.parametrize("native, precision", [(True, "bf16"), (None, "bf16"), (False, "fp32")])
def test_no_warning_where_bf16_is_native_unknown_or_not_asked_for(tiny_checkpoint, monkeypatch,
                                                                  warning_not_yet_given, native, precision):
    monkeypatch.setattr(cpu_features, "has_native_bf16", lambda: native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QualityScorer(tiny_checkpoint, device="cpu", precision=precision)


def test_info_reports_bf16_and_backends_without_importing_torch():
    code = ("import sys; from qualiclip_infer.cli import main\n"
            "try: main(['--info'])\n"
            "except SystemExit as e: print('torch imported:', 'torch' in sys.modules, 'exit', e.code)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = run.stdout.splitlines()
    assert lines[-1] == "torch imported: False exit 0", run.stderr
    native = cpu_features.has_native_bf16()
    expected = {True: "native bf16: yes", False: "native bf16: no", None: "native bf16: unknown"}[native]
    assert any(line.startswith("cpu: ") and expected in line for line in lines), lines
    backends = next(line for line in lines if line.startswith("backends: "))
    assert "torch " in backends and "openvino " in backends and "onnxruntime " in backends
