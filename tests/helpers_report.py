"""Helpers of the report and calibration tests: a generated photo folder, the commands run as subprocesses, and a
headless Chromium driven by Selenium (the system's browser and driver; the tests skip where they are missing)."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from helpers import natural_image, save_image

SUBPROCESS_TIMEOUT = 300
# name -> (width, height): sizes differ, two folders, so the maps' mirrored layout and the tiles' sizes are exercised.
PHOTOS = {"a.jpg": (96, 64), "b.png": (64, 96), "sub/c.jpg": (120, 90), "sub/d.jpg": (80, 80),
          "e.jpg": (200, 150), "sub/f.png": (72, 48), "g.jpg": (90, 120)}
BROKEN = {"broken.jpg": b"not an image at all", "truncated.png": None}  # None: a PNG cut short
TOO_SMALL = "small.png"  # 20 x 20: refused by the scorer


def make_photos(folder: Path) -> Dict[str, Tuple[int, int]]:
    """Writes the photos, two unreadable files and one too small to score under ``folder``; returns the photos."""
    for seed, (name, (width, height)) in enumerate(PHOTOS.items()):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        save_image(folder / name, natural_image(width, height, seed=seed))
    (folder / "broken.jpg").write_bytes(BROKEN["broken.jpg"])
    whole = save_image(folder / "whole.png", natural_image(64, 64, seed=50)).read_bytes()
    (folder / "whole.png").unlink()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 3])
    save_image(folder / TOO_SMALL, natural_image(20, 20, seed=60))
    return dict(PHOTOS)


def run(module: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``python -m module args`` in ``cwd``, with one torch thread (the tiny model gains nothing from more)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=SUBPROCESS_TIMEOUT)


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@contextlib.contextmanager
def chromium(width: int = 1200, height: int = 1400) -> Iterator:
    """A headless Chromium under Selenium, with the system's chromedriver (nothing is downloaded)."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("no Chromium and chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--allow-file-access-from-files"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
