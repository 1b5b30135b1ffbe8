"""Score a folder on a Ray cluster with ``score_dataset`` and write the rows as Parquet; runs on a local cluster.

With no arguments it makes up its own data, so it runs anywhere in about a minute with nothing downloaded: a tiny
random CLIP in the official checkpoint format (from ``finetune_tiny.py``) and 200 synthetic pictures, one of them a
broken file. Pass real data to score it::

    python examples/score_on_ray.py                                   # made-up data, local cluster
    python examples/score_on_ray.py photos/ --weights /shared/QualiCLIP.pth -o scores/
    python examples/score_on_ray.py s3://bucket/photos/ --address auto --gpus 0.25 -o s3://bucket/scores/

``--address auto`` joins the cluster this machine belongs to (``ray start --head`` on the head node, ``ray start
--address=HEAD:6379`` on the others). The weights must be readable at the same path on every node (a shared
file system), or already in every node's Hugging Face cache (see docs/scale.md, "Weights on every node").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from PIL import Image

from qualiclip_infer import score_dataset

N_PICTURES = 200


def made_up_data(work: Path) -> tuple:
    """A tiny random checkpoint and a folder of synthetic pictures in two sizes, plus one broken file."""
    from finetune_tiny import synthetic_picture, write_tiny_checkpoint  # next to this file

    folder = work / "pictures"
    folder.mkdir()
    for seed in range(N_PICTURES):
        Image.fromarray(synthetic_picture(96 if seed % 4 else 160, seed)).save(folder / f"{seed:04d}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a JPEG")
    return folder, write_tiny_checkpoint(work / "tiny.pth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="folder, file or URI (default: made-up data)")
    parser.add_argument("--weights", help="checkpoint every node can read (default: the official weights, or a "
                                          "tiny random one with made-up data)")
    parser.add_argument("--address", default="local", help="'local' (default), 'auto' or ray://HOST:PORT")
    parser.add_argument("--actors", type=int, help="scoring actors (default: as many as the CPUs/GPUs allow)")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs per actor, e.g. 0.25 for four per GPU")
    parser.add_argument("-o", "--output", "--out", dest="out", help="folder or URI for the Parquet files (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source, weights = args.source, args.weights
        if source is None:
            source, tiny = made_up_data(Path(tmp))
            weights = weights or str(tiny)
        # A local cluster of 2 CPUs fits any laptop; on a real cluster, Ray knows its resources.
        ray.init(args.address, **(dict(num_cpus=2, include_dashboard=False) if args.address == "local" else {}))

        started = time.perf_counter()
        rows = score_dataset(source, weights=weights, concurrency=args.actors, num_gpus=args.gpus,
                             device="auto", batch_size=16)
        out = args.out or str(Path(tmp) / "scores")
        rows.write_parquet(out)  # written by the cluster, one file per block; every node must reach `out`
        elapsed = time.perf_counter() - started

        table = pq.read_table(out)  # pyarrow reads local folders and s3://, gs://... alike
        scored = table.filter(pc.is_valid(table["score"]))
        failed = table.filter(pc.is_null(table["score"]))
        print(f"{table.num_rows} images in {elapsed:.1f} s: {scored.num_rows} scored "
              f"(mean {pc.mean(scored['score']).as_py():.4f}), {failed.num_rows} failed")
        for row in failed.slice(0, 5).to_pylist():
            print(f"  {row['path']}: {row['error']}")
        worst = scored.sort_by([("score", "ascending")]).slice(0, 3).to_pylist()
        print("lowest scores:", ", ".join(f"{Path(row['path']).name} {row['score']:.4f}" for row in worst))
        ray.shutdown()


if __name__ == "__main__":
    main()
