"""Fixtures: isolated caches, checkpoints in the official format (built by :mod:`helpers`), one torch thread."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from helpers import RN50_CONFIG, TINY_CONFIG, write_checkpoint

# A suite started in the background by a non-interactive shell (`cmd &` in a script) inherits SIGINT ignored, and an
# ignored signal stays ignored in every command it starts: the tests that press Ctrl-C need it delivered. A handled
# signal is reset to its default in a started program, which then installs Python's KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches, and none reaches a real hub."""
    cache = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("QUALICLIP_INFER_CACHE", str(cache / "qualiclip"))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: any real request fails fast
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pth", TINY_CONFIG, seed=0)


@pytest.fixture(scope="session")
def rn50_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("weights") / "rn50.pth", RN50_CONFIG, seed=1)


@pytest.fixture
def one_thread():
    """Single-threaded torch: far faster than two threads when other work shares the cores, and a fixed order of
    float additions where a test compares batched with single-image results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
