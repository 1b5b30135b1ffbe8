"""Peak memory of scoring one image, by image size: the figure behind the default per-image pixel limit.

Each size runs in a fresh process (peak RSS is per process): load the scorer, score one image of that many
megapixels, report the peak resident set size. The slope of peak RSS against megapixels is the cost of activations
per megapixel; the intercept is the process, torch and the model.

    python benchmarks/bench_memory.py [--weights rn50.pth] [--mpx 0.05 1 2 4 8]

Without ``--weights`` a full-size RN50 checkpoint with random weights is written to a temporary folder (same memory
as the real one: memory does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, torch
from qualiclip_infer import QualityScorer
weights, megapixels, device = sys.argv[1], float(sys.argv[2]), sys.argv[3]
side = (megapixels * 1e6 / 12) ** 0.5
width, height = int(4 * side), int(3 * side)
scorer = QualityScorer(weights, device=device, max_image_pixels=None)
image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
scorer.score(image)
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"width": width, "height": height, "mpx": width * height / 1e6, "peak_mib": peak_mib}))
"""


def _rn50_checkpoint(folder: str) -> str:
    import open_clip
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from helpers import RN50_CONFIG, official_state, random_clip

    path = os.path.join(folder, "rn50.pth")
    torch.save(official_state(random_clip(RN50_CONFIG, seed=0)), path)
    del open_clip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="checkpoint (default: a random full-size RN50)")
    parser.add_argument("--mpx", type=float, nargs="+", default=[0.05, 1, 2, 4, 8])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights or _rn50_checkpoint(folder)
        rows = []
        for megapixels in args.mpx:
            out = subprocess.run([sys.executable, "-c", CHILD, weights, str(megapixels), args.device],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{rows[-1]['width']:>5}x{rows[-1]['height']:<5} {rows[-1]['mpx']:6.2f} Mpx  "
                  f"peak {rows[-1]['peak_mib']:8.0f} MiB", flush=True)
    # Below a few megapixels the peak is that of loading the model, not of scoring: the marginal cost per megapixel
    # is the slope between the two largest sizes.
    small, large = sorted(rows, key=lambda row: row["mpx"])[-2:]
    slope = (large["peak_mib"] - small["peak_mib"]) / (large["mpx"] - small["mpx"])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs: {slope:.0f} MiB per megapixel "
          f"(between {small['mpx']:.0f} and {large['mpx']:.0f} Mpx); load peak {rows[0]['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
