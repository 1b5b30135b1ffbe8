"""Fine-tuning (qualiclip_infer.train): losses, data, rank statistics, a real learning run, resume, export, CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import TINY_CONFIG, natural_image, save_image, write_checkpoint
from PIL import Image
from torch.utils.data import DataLoader

from qualiclip_infer import QualityScorer, load_checkpoint
from qualiclip_infer.train.cli import main
from qualiclip_infer.train.data import (CropStream, degrade_levels, fit_for_crops, keyed_rng, list_images,
                                        overlapping_boxes, read_mos_csv, split_images, spread_levels)
from qualiclip_infer.train.degradations import DISTORTIONS, degradation_grid
from qualiclip_infer.train.losses import LossConfig, margin_ranking, prompt_similarities, qualiclip_loss
from qualiclip_infer.train.loop import TrainConfig, Trainer, level_correlations, pearson, rankdata, spearman, state_path

CROP = 64
# Cheap types whose levels a tiny network tells apart on 64-pixel crops within a few hundred steps (JPEG's take
# far longer): the learning test is about the loop, the catalogue has its own tests.
LEARNABLE = ("gaussian_blur", "lens_blur", "motion_blur", "white_noise", "white_noise_ycbcr", "pixelate", "jpeg2000")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pristine")
    (folder / "nested").mkdir()
    for seed in range(12):
        where = folder / "nested" if seed % 3 == 0 else folder
        save_image(where / f"image{seed:02d}.png", natural_image(96, 80, seed=seed))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def learnable_checkpoint(tmp_path_factory) -> Path:
    """``tiny_checkpoint`` without the common text component that brings each prompt pair within a few hundredths.

    Pairs that close (as in CLIP) make a random network's start far from any ranking: it needs far more than the
    few hundred steps a test can afford. The learning test is about the loop, so it starts where learning is quick.
    """
    return write_checkpoint(tmp_path_factory.mktemp("weights") / "learnable.pth", TINY_CONFIG, seed=0,
                            text_common_component=0.0)


@pytest.fixture
def one_thread():
    """Training tests run single-threaded: far faster than two threads when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(images: Path, init: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(images=images, out=out, init=init, device="cpu", steps=2, batch_size=4, crop_size=CROP,
                    lr=1e-3, distortions=LEARNABLE, val_fraction=0.25, val_crops=8, workers=0, checkpoint_every=0)
    return TrainConfig(**{**settings, **overrides})


# ------------------------------------------------------------------------------------------- losses

def _similarities(values) -> torch.Tensor:
    """``values[crop][level]`` -> a 1 x 2 x L x 1 tensor (one sample, one prompt pair)."""
    return torch.tensor(values, dtype=torch.float64)[None, :, :, None]


def test_margin_ranking_is_a_hinge():
    higher, lower = torch.tensor([0.5, 0.3, 0.30]), torch.tensor([0.3, 0.5, 0.25])
    assert torch.allclose(margin_ranking(higher, lower, 0.1), torch.tensor([0.0, 0.3, 0.05]))


def test_positive_loss_by_hand():
    s_pos = _similarities([[0.5, 0.3, 0.4], [0.6, 0.6, 0.2]])
    # crop 1: (1,2) 0.1-0.2 -> 0, (1,3) 0.1-0.1 -> 0, (2,3) 0.1+0.1 = 0.2; crop 2: (1,2) 0.1, then 0.1-0.4 -> 0 twice
    terms = qualiclip_loss(s_pos, torch.zeros_like(s_pos), LossConfig(0.1, 0.0, 0.0))
    assert terms.pos.item() == pytest.approx((0.2 + 0.1) / 6)
    # |crop 1 - crop 2| per level: 0.1, 0.3, 0.2 for the positive prompt, 0 for the negative one
    assert terms.neg.item() == 0 and terms.cons.item() == pytest.approx(0.6 / 6)


def test_negative_loss_by_hand():
    s_neg = _similarities([[0.1, 0.3, 0.2], [0.1, 0.1, 0.1]])
    # crop 1: (1,2) 0.1-0.2 -> 0, (1,3) 0.1-0.1 -> 0, (2,3) 0.1+0.1 = 0.2; crop 2: three ties cost the margin each
    terms = qualiclip_loss(torch.zeros_like(s_neg), s_neg, LossConfig(0.0, 0.1, 1.0))
    assert terms.neg.item() == pytest.approx((0.2 + 0.3) / 6)
    assert terms.pos.item() == 0 and terms.cons.item() == 0


def test_consistency_loss_and_weights_by_hand():
    s_pos = _similarities([[0.5, 0.4], [0.45, 0.1]])
    s_neg = _similarities([[0.2, 0.3], [0.2, 0.32]])
    config = LossConfig(margin_pos=0.0, margin_neg=0.0, margin_cons=0.02, weight_pos=2, weight_neg=3, weight_cons=5)
    terms = qualiclip_loss(s_pos, s_neg, config)
    # gaps: pos 0.05, 0.3; neg 0.0, 0.02 -> minus the 0.02 tolerance: 0.03, 0.28, 0, 0
    assert terms.cons.item() == pytest.approx((0.03 + 0.28) / 4)
    assert terms.pos.item() == 0 and terms.neg.item() == 0
    assert terms.total.item() == pytest.approx(5 * terms.cons.item())


def test_perfectly_ordered_similarities_cost_nothing():
    levels = torch.arange(5, dtype=torch.float64)
    s_pos = (0.3 - 0.02 * levels).expand(3, 2, 4, 5).permute(0, 1, 3, 2)  # falls by 0.02 per level, 4 pairs
    s_neg = (0.1 + 0.02 * levels).expand(3, 2, 4, 5).permute(0, 1, 3, 2)
    assert qualiclip_loss(s_pos, s_neg, LossConfig(0.02, 0.02, 0.0)).total.item() == pytest.approx(0, abs=1e-12)
    assert qualiclip_loss(s_pos, s_neg, LossConfig(0.03, 0.0, 0.0)).pos.item() > 0  # adjacent levels miss 0.03
    assert qualiclip_loss(s_pos.flip(2), s_neg, LossConfig(0.0, 0.0, 0.0)).pos.item() > 0  # reversed order


def test_loss_rejects_bad_shapes_and_margins():
    with pytest.raises(ValueError, match="2 crops"):
        qualiclip_loss(torch.zeros(1, 3, 5, 7), torch.zeros(1, 3, 5, 7))
    with pytest.raises(ValueError, match="margin_pos"):
        LossConfig(margin_pos=-0.1)


def test_prompt_similarities_split_positive_and_negative_rows():
    prompts = torch.eye(4)[:, :3] * 2  # rows: e0, e1, e2, 0 (a zero row normalises to zero)
    s_pos, s_neg = prompt_similarities(torch.tensor([[3.0, 4.0, 0.0]]), prompts)
    assert torch.allclose(s_pos, torch.tensor([[0.6, 0.0]])) and torch.allclose(s_neg, torch.tensor([[0.8, 0.0]]))


# ------------------------------------------------------------------------------------------- data

def test_crops_overlap_stay_inside_and_are_reproducible():
    for trial in range(300):
        width, height = 64 + trial % 50, 64 + (7 * trial) % 90
        boxes = overlapping_boxes(width, height, 64, 2, keyed_rng(trial))
        assert boxes == overlapping_boxes(width, height, 64, 2, keyed_rng(trial))
        (l1, t1), (l2, t2) = boxes
        assert all(0 <= left <= width - 64 and 0 <= top <= height - 64 for left, top in boxes)
        assert (64 - abs(l1 - l2)) * (64 - abs(t1 - t2)) >= 64 * 64 / 4  # at least a quarter shared
    with pytest.raises(ValueError):
        overlapping_boxes(63, 100, 64, 2, keyed_rng(0))


def test_small_images_are_upscaled_to_fit_a_crop():
    assert fit_for_crops(Image.new("RGB", (40, 100)), 64).size == (64, 160)
    assert fit_for_crops(Image.new("RGB", (300, 200)), 64).size == (300, 200)


def test_crop_stream_samples(image_folder):
    paths = list_images(image_folder)
    assert len(paths) == 12 and all(p.suffix == ".png" for p in paths)
    stream = CropStream(paths, CROP, crops=2, num_distortions=len(DISTORTIONS), seed=3)
    crops, distortion = stream[5]
    assert crops.shape == (2, 3, CROP, CROP) and crops.dtype == torch.uint8 and 0 <= distortion < len(DISTORTIONS)
    assert torch.equal(CropStream(paths, CROP, 2, len(DISTORTIONS), seed=3)[5][0], crops)
    assert not torch.equal(CropStream(paths, CROP, 2, len(DISTORTIONS), seed=4)[5][0], crops)
    # Each epoch shows every image once, in a new order.
    epochs = [[stream.image_index(e * 12 + i) for i in range(12)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12)) and epochs[0] != epochs[1]
    # The crops are cut from the image: find both in its pixels.
    image = torch.from_numpy(np.asarray(Image.open(paths[stream.image_index(5)]).convert("RGB")).copy())
    image = image.permute(2, 0, 1)
    for crop in crops:
        assert any(torch.equal(image[:, top:top + CROP, left:left + CROP], crop)
                   for top in range(image.shape[1] - CROP + 1) for left in range(image.shape[2] - CROP + 1))


def test_samples_do_not_depend_on_loader_workers(image_folder):
    stream = CropStream(list_images(image_folder), CROP, 2, len(DISTORTIONS), seed=0)
    batches = [list(DataLoader(stream, batch_size=3, sampler=range(10, 16), num_workers=workers))
               for workers in (0, 2)]
    for (crops_a, types_a), (crops_b, types_b) in zip(*batches):
        assert torch.equal(crops_a, crops_b) and torch.equal(types_a, types_b)


def test_hold_out_split_is_disjoint_and_seeded():
    paths = [Path(f"{i}.png") for i in range(40)]
    train, val = split_images(paths, 0.25, seed=1)
    assert len(val) == 10 and not set(train) & set(val) and set(train) | set(val) == set(paths)
    assert (train, val) == split_images(paths, 0.25, seed=1) and val != split_images(paths, 0.25, seed=2)[1]
    assert len(split_images(paths[:3], 0.01, seed=0)[1]) == 1 and split_images(paths, 0.0, seed=0) == (paths, [])
    with pytest.raises(ValueError):
        split_images(paths[:1], 0.5, seed=0)


def test_degrade_levels_orders_intensity_and_is_seeded():
    assert spread_levels(5) == (1, 2, 3, 4, 5) and spread_levels(3) == (1, 3, 5) and spread_levels(2) == (1, 5)
    crops = torch.from_numpy(natural_image(CROP, CROP, seed=1)).permute(2, 0, 1).float().div(255)
    crops = crops.expand(3, 2, -1, -1, -1).contiguous()
    types = torch.tensor([0, 1, 0])
    names = ("gaussian_blur", "white_noise")
    out = degrade_levels(crops, types, names, (1, 3, 5), seed=7)
    assert out.shape == (3, 2, 3, 3, CROP, CROP)
    assert torch.equal(out, degrade_levels(crops, types, names, (1, 3, 5), seed=7))
    change = (out - crops[:, :, None]).abs().mean(dim=(3, 4, 5))  # sample x crop x level
    assert (change.diff(dim=2) > 0).all()  # every crop moves further from the original with each level


def test_read_mos_csv(tmp_path):
    save_image(tmp_path / "a.png", natural_image(40, 40))
    save_image(tmp_path / "b.png", natural_image(40, 40, seed=1))
    (tmp_path / "mos.csv").write_text("path,mos\na.png,3.5\nb.png,1\n")
    assert read_mos_csv(tmp_path / "mos.csv") == [(tmp_path / "a.png", 3.5), (tmp_path / "b.png", 1.0)]
    (tmp_path / "bad.csv").write_text("path,mos\na.png,3.5\nb.png,high\n")
    with pytest.raises(ValueError, match="line 3"):
        read_mos_csv(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("path,mos\na.png,3.5\nc.png,1\n")
    with pytest.raises(FileNotFoundError, match="c.png"):
        read_mos_csv(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------- rank statistics

def test_rank_correlations_match_scipy():
    rng = np.random.default_rng(0)
    for trial in range(20):
        x = rng.integers(0, 6, 30).astype(float) if trial % 2 else rng.normal(size=30)  # odd trials: many ties
        y = x + rng.normal(size=30)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        assert np.allclose(rankdata(tx).numpy(), scipy.stats.rankdata(x))
        assert spearman(tx, ty) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)
        assert pearson(tx, ty) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def test_level_correlations():
    perfect = torch.tensor([[0.9, 0.7, 0.5], [0.4, 0.3, 0.1]])
    metrics = level_correlations(perfect, (1, 3, 5))
    assert metrics["level_srcc"] == pytest.approx(1.0)
    assert metrics["level_srcc_pooled"] < 1  # crop 2's mildest level scores below crop 1's strongest
    flat = level_correlations(torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]]), (1, 3, 5))
    assert flat["level_srcc"] == pytest.approx(-0.5)  # the constant crop counts as 0


# ------------------------------------------------------------------------------------------- training

def test_training_learns_to_rank_levels(tmp_path, image_folder, learnable_checkpoint, one_thread):
    """A real run: a random tiny CLIP learns to rank held-out crops by degradation level.

    Settings fit a random network, not the pre-trained RN50 the defaults are for: its image-text cosines spread
    over tenths rather than hundredths (see ``learnable_checkpoint``), hence larger margins and learning rate. Its
    BatchNorm statistics were measured on natural images, so they stay frozen, as by default.
    """
    config = tiny_config(image_folder, learnable_checkpoint, tmp_path / "tuned.pth", steps=400, batch_size=8,
                         lr=1e-3, loss=LossConfig(0.05, 0.05, 0.025), val_crops=96, val_every=0)
    started = time.perf_counter()
    trainer = Trainer(config)
    history = trainer.run()
    before, after = history[0]["level_srcc"], history[-1]["level_srcc"]
    print(f"\nlevel SRCC {before:.3f} -> {after:.3f} (pooled {history[0]['level_srcc_pooled']:.3f} -> "
          f"{history[-1]['level_srcc_pooled']:.3f}) in {history[-1]['step']} steps, "
          f"{time.perf_counter() - started:.0f} s")
    assert history[-1]["step"] == 400
    assert after > before + 0.3 and after > 0.5

    tuned, initial = load_checkpoint(config.out), load_checkpoint(learnable_checkpoint)
    assert set(tuned.clip_state) == set(initial.clip_state)
    assert torch.equal(tuned.prompt_features, initial.prompt_features)
    for key, value in initial.clip_state.items():
        same = torch.equal(tuned.clip_state[key], value)
        if not key.startswith("visual.") or key.endswith("positional_embedding"):
            assert same, key  # the text tower and the position-free pool's unused table are copied
        elif key.endswith(".weight"):
            assert not same, key
    for key, value in trainer.model.visual.state_dict().items():
        assert torch.equal(tuned.clip_state[f"visual.{key}"], value), key  # the export is the trained tower

    scorer = QualityScorer(weights=config.out, device="cpu")
    clean = torch.from_numpy(natural_image(96, 96, seed=99)).permute(2, 0, 1).float().div(255)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(model.normalize(torch.stack([clean, noisy]))).tolist()
    assert [scorer.score(clean), scorer.score(noisy)] == pytest.approx(expected, abs=1e-5)


def test_batchnorm_statistics_are_frozen_unless_asked(tmp_path, image_folder, tiny_checkpoint, one_thread):
    def running_means(trainer: Trainer) -> torch.Tensor:
        return torch.cat([m.running_mean for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)])

    for train_bn in (False, True):
        trainer = Trainer(tiny_config(image_folder, tiny_checkpoint, tmp_path / "out.pth", train_bn=train_bn,
                                      steps=1))
        before = running_means(trainer).clone()
        trainer.run()
        assert torch.equal(running_means(trainer), before) != train_bn


def test_resume_reaches_the_uninterrupted_state(tmp_path, image_folder, tiny_checkpoint, one_thread):
    common = dict(batch_size=4, accumulate=2, val_crops=4, val_every=1)  # 9 images: 3 micro-batches an epoch
    straight = Trainer(tiny_config(image_folder, tiny_checkpoint, tmp_path / "straight.pth", steps=4, **common))
    straight.run()

    first = tiny_config(image_folder, tiny_checkpoint, tmp_path / "resumed.pth", steps=2, checkpoint_every=1,
                        **common)
    Trainer(first).run()
    state = state_path(first.out)
    assert state == tmp_path / "resumed.state.pt" and torch.load(state, weights_only=True)["step"] == 2
    resumed = Trainer(replace(first, steps=4, resume=state, init=None))  # the initial weights come from the state
    assert resumed.step == 2 and resumed.micro_batch == 4
    resumed.run()

    assert resumed.step == straight.step == 4
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key
    # The interrupted run also validated when it stopped (step 2); every other validation is the same.
    assert [h["step"] for h in resumed.history] == [0, 1, 2, 3, 4]
    assert [h["step"] for h in straight.history] == [0, 1, 3, 4]
    resumed_at = {h["step"]: h for h in resumed.history}
    for entry in straight.history:
        assert entry["level_srcc"] == pytest.approx(resumed_at[entry["step"]]["level_srcc"], abs=1e-9)

    with pytest.raises(ValueError, match="seed"):
        Trainer(replace(first, steps=4, resume=state, seed=1))


def test_validation_against_a_mos_csv(tmp_path, image_folder, tiny_checkpoint):
    rows = [f"{path},{i % 5 + 1}" for i, path in enumerate(list_images(image_folder)[:6])]  # absolute paths
    (tmp_path / "mos.csv").write_text("path,mos\n" + "\n".join(rows) + "\n")
    trainer = Trainer(tiny_config(image_folder, tiny_checkpoint, tmp_path / "out.pth", val_csv=tmp_path / "mos.csv"))
    metrics = trainer.evaluate()
    assert set(metrics) == {"level_srcc", "level_srcc_pooled", "mos_srcc", "mos_plcc"}
    # Before any step the model is the initial checkpoint: score the same images independently, correlate with scipy.
    scores = QualityScorer(tiny_checkpoint, device="cpu").score([path for path, _ in trainer.mos_rows])
    mos = [value for _, value in trainer.mos_rows]
    assert mos == [i % 5 + 1 for i in range(6)]
    assert metrics["mos_srcc"] == pytest.approx(scipy.stats.spearmanr(scores, mos)[0], abs=1e-6)
    assert metrics["mos_plcc"] == pytest.approx(scipy.stats.pearsonr(scores, mos)[0], abs=1e-5)


def test_bad_settings_fail_before_training(tmp_path, image_folder, tiny_checkpoint):
    with pytest.raises(ValueError, match="distortions"):
        tiny_config(image_folder, tiny_checkpoint, tmp_path / "o.pth", distortions=("blurry",))
    with pytest.raises(ValueError, match="crop_size"):
        tiny_config(image_folder, tiny_checkpoint, tmp_path / "o.pth", crop_size=16)
    with pytest.raises(ValueError, match="no image files"):
        Trainer(tiny_config(tmp_path, tiny_checkpoint, tmp_path / "o.pth"))
    with pytest.raises(ValueError, match="CUDA only"):
        Trainer(tiny_config(image_folder, tiny_checkpoint, tmp_path / "o.pth", precision="fp16"))


# ------------------------------------------------------------------------------------------- command line

def _run_cli(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    return subprocess.run([sys.executable, "-m", "qualiclip_infer.train", *args], capture_output=True, text=True,
                          timeout=300, env=environment)


def test_cli_draws_the_degradation_grid(tmp_path, image_folder):
    source = list_images(image_folder)[0]
    result = _run_cli("degradations", str(source), "-o", str(tmp_path / "grid.png"), "--tile", "32")
    assert result.returncode == 0, result.stderr
    image = torch.from_numpy(np.asarray(Image.open(source).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG" and grid.size == degradation_grid(image, tile=32).size
        assert grid.height > 24 * 32


def test_cli_fit_writes_a_loadable_checkpoint(tmp_path, image_folder, tiny_checkpoint):
    out = tmp_path / "cli.pth"
    result = _run_cli("fit", "--images", str(image_folder), "--out", str(out), "--init", str(tiny_checkpoint),
                      "--device", "cpu", "--steps", "2", "--batch-size", "2", "--crop-size", str(CROP),
                      "--workers", "0", "--val-crops", "4", "--distortions", "gaussian_blur,jpeg",
                      "--checkpoint-every", "1")
    assert result.returncode == 0, result.stderr
    assert "level_srcc" in result.stderr and "wrote" in result.stderr
    exported = load_checkpoint(out)
    assert exported.architecture == load_checkpoint(tiny_checkpoint).architecture
    trained = torch.load(state_path(out), weights_only=True)
    assert trained["step"] == 2
    for key, value in trained["visual"].items():  # the export holds the tower of the last step
        assert torch.equal(exported.clip_state[f"visual.{key}"], value), key


@pytest.mark.parametrize("args, message", [
    (["fit", "--out", "x.pth"], "--images"),
    (["fit", "--images", ".", "--out", "x.pth", "--lr", "0"], "--lr"),
    (["fit", "--images", ".", "--out", "x.pth", "--val-fraction", "1"], "fraction"),
    (["fit", "--images", ".", "--out", "x.pth", "--distortions", "blur"], "unknown distortion"),
    (["fit", "--images", "{missing}", "--out", "x.pth"], "not a folder"),
    (["fit", "--images", "{images}", "--out", "x.pth", "--init", "{missing}"], "not found"),
    (["fit", "--images", "{images}", "--out", "x.pth", "--init", "{init}", "--levels", "9"], "levels"),
    (["degradations", "{missing}", "-o", "grid.png"], "no such file"),
    (["train"], "invalid choice"),
])
def test_cli_rejects_bad_arguments_on_one_line(args, message, tmp_path, image_folder, tiny_checkpoint, capsys):
    names = dict(missing=tmp_path / "missing", images=image_folder, init=tiny_checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([arg.format(**names) for arg in args]))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("qualiclip-train") and message in error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_training_on_cuda(precision, tmp_path, image_folder, tiny_checkpoint):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    config = tiny_config(image_folder, tiny_checkpoint, tmp_path / "gpu.pth", device="cuda", precision=precision,
                         steps=3, checkpoint_every=2, workers=2)
    trainer = Trainer(config)
    history = trainer.run()
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert all(math.isfinite(value) for value in history[-1].values())
    exported = load_checkpoint(config.out)
    for key, value in trainer.model.visual.state_dict().items():
        assert torch.equal(exported.clip_state[f"visual.{key}"], value.cpu()), key
    image = torch.from_numpy(natural_image(64, 64)).permute(2, 0, 1).float().div(255)
    model = trainer.model.eval()
    with torch.no_grad():
        expected = float(model(model.normalize(image[None].cuda())))
    assert QualityScorer(weights=config.out, device="cuda").score(image) == pytest.approx(expected, abs=1e-4)
    resumed = Trainer(replace(config, steps=5, resume=state_path(config.out)))
    assert resumed.step == 3
    resumed.run()
    assert resumed.step == 5
