"""Improve a degraded photo by gradient descent on QualiCLIP, used as a differentiable loss.

The pixels themselves are the parameters: Adam lowers ``QualiCLIPLoss`` (``1 - score``) while a fidelity term keeps
the picture close to the input, the way a restoration network would be trained with QualiCLIP as one of its losses.
By default the photo is first degraded with Gaussian noise, to give the loss something to repair.

Run with the official weights (downloaded once from the Hugging Face Hub)::

    python examples/improve_with_qualiclip_loss.py photo.jpg improved.png

Options: ``--steps``, ``--lr``, ``--fidelity``, ``--noise`` (0 keeps the photo as it is), ``--weights`` (a local
checkpoint), ``--device``, ``--max-side`` (the photo is shrunk to at most this many pixels a side, to keep it quick).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from PIL import Image

from qualiclip_infer import QualiCLIPLoss
from qualiclip_infer.images import open_image, pil_to_tensor
from qualiclip_infer.devices import resolve_device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="photo to improve")
    parser.add_argument("output", help="where to write the improved photo (PNG)")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps (default 100)")
    parser.add_argument("--lr", type=float, default=0.005, help="Adam learning rate on pixel values (default 0.005)")
    parser.add_argument("--fidelity", type=float, default=1.0,
                        help="weight of the mean squared distance to the input (default 1)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="standard deviation of the Gaussian noise added first (default 0.1; 0: none)")
    parser.add_argument("--weights", help="checkpoint (default: the official QualiCLIP weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--max-side", type=int, default=512, help="shrink larger photos to this side (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    photo = open_image(args.input)
    photo.thumbnail((args.max_side, args.max_side), Image.BICUBIC)
    generator = torch.Generator().manual_seed(args.seed)
    clean = pil_to_tensor(photo)[None]
    start = (clean + args.noise * torch.randn(clean.shape, generator=generator)).clamp(0, 1).to(device)

    loss_fn = QualiCLIPLoss(args.weights).to(device)
    pixels = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=args.lr)
    before = 1 - loss_fn(start).item()
    for step in range(1, args.steps + 1):
        optimizer.zero_grad()
        quality = loss_fn(pixels)
        loss = quality + args.fidelity * (pixels - start).pow(2).mean()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)  # stay a valid image
        if step % max(1, args.steps // 10) == 0:
            print(f"step {step:4d}  score {1 - quality.item():.4f}  loss {loss.item():.4f}", file=sys.stderr)
    with torch.no_grad():
        after = 1 - loss_fn(pixels).item()
    array = (pixels[0].detach().cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(args.output, format="PNG")
    print(f"score before {before:.4f}  after {after:.4f}  -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
