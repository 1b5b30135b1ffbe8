"""The HTML report: built by ``qualiclip-score --report`` from a scored folder (with failed files and quality maps) and
checked in a real headless Chromium; ``qualiclip-report`` on csv, jsonl and Parquet; ``qualiclip-eval --report``."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from helpers_report import chromium, make_photos, read_csv, run
from qualiclip_infer.files import mirrored_paths
from qualiclip_infer.output import RowWriter
from qualiclip_infer.parquet_rows import ParquetRowWriter
from qualiclip_infer.report import ReportRow, build_report
from qualiclip_infer.results import ScoreResult

BINS = 20


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_checkpoint):
    """A folder scored by the CLI with --maps and --report; its rows as the csv holds them."""
    root = tmp_path_factory.mktemp("collection")
    make_photos(root / "photos")
    done = run("qualiclip_infer", "photos", "--weights", tiny_checkpoint, "-o", "scores.csv", "--maps", "maps",
               "--report", "out/report.html", "--threads", "1", "-q", cwd=root)
    assert done.returncode == 1, done.stderr  # three inputs cannot be scored
    rows = read_csv(root / "scores.csv")
    scored = sorted((row for row in rows if row["score"]), key=lambda row: (float(row["score"]), row["path"]))
    return SimpleNamespace(root=root, page=root / "out" / "report.html", rows=rows, scored=scored,
                           failed=[row for row in rows if not row["score"]])


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


@pytest.fixture
def page(browser, collection):
    browser.set_window_size(1200, 1400)
    browser.get(collection.page.as_uri())
    return browser


def tiles(driver, visible_only: bool = False):
    found = driver.find_elements("css selector", "#gallery .tile")
    return [tile for tile in found if tile.is_displayed()] if visible_only else found


def tile_paths(driver) -> list:
    return [tile.get_attribute("data-path") for tile in tiles(driver, visible_only=True)]


def local_file(url: str) -> Path:
    assert url.startswith("file://"), url
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(url).path))


def test_one_tile_per_scored_image_worst_first_and_the_other_orders(page, collection):
    assert len(collection.scored) == 7 and len(collection.failed) == 3
    assert tile_paths(page) == [row["path"] for row in collection.scored]
    for tile, row in zip(tiles(page), collection.scored):
        assert tile.find_element("css selector", ".score").text == f"{float(row['score']):.4f}"
        assert f"{row['width']}×{row['height']}" in tile.text
        image = tile.find_element("css selector", "img")
        assert image.get_attribute("loading") == "lazy"
        with Image.open(local_file(image.get_attribute("src"))) as thumbnail:
            assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 240
    page.find_element("css selector", "input[value=best]").click()
    best = sorted(collection.scored, key=lambda row: (-float(row["score"]), row["path"]))
    assert tile_paths(page) == [row["path"] for row in best]
    page.find_element("css selector", "input[value=path]").click()
    assert tile_paths(page) == sorted(row["path"] for row in collection.scored)


def test_failed_inputs_listed_with_their_errors(page, collection):
    cells = [[cell.text for cell in line.find_elements("css selector", "td")]
             for line in page.find_elements("css selector", "#failed-table tbody tr")]
    assert cells == [[row["path"], row["error"]] for row in collection.failed]
    assert {os.path.basename(path) for path, _ in cells} == {"broken.jpg", "truncated.png", "small.png"}
    assert all(error for _, error in cells)


def test_summary_and_histogram_count_the_scores(page, collection):
    scores = np.array([float(row["score"]) for row in collection.scored])
    expected = [int(((scores >= k / BINS) & ((scores < (k + 1) / BINS) | (k == BINS - 1))).sum()) for k in range(BINS)]
    bars = page.find_elements("css selector", "#histogram rect.bar")
    counts = [int(bar.get_attribute("data-count")) for bar in bars]
    assert counts == expected and sum(counts) == len(scores)
    heights = np.array([float(bar.get_attribute("height")) for bar in bars])
    np.testing.assert_allclose(heights / heights.max(), np.array(expected) / max(expected), atol=0.01)
    stats = {stat.get_attribute("data-stat"): stat.find_element("css selector", "dd").text
             for stat in page.find_elements("css selector", ".stat")}
    assert (stats["images"], stats["scored"], stats["failed"]) == ("10", "7", "3")
    assert stats["mean"] == f"{scores.mean():.4f}" and stats["median"] == f"{np.median(scores):.4f}"
    assert stats["p25"] == f"{np.percentile(scores, 25):.4f}"


def test_the_filter_hides_tiles_outside_the_range(page, collection):
    scores = [float(row["score"]) for row in collection.scored]
    # Bounds equal to two scores, typed as the csv writes them: both images stay (the range is inclusive).
    low, high = collection.scored[1]["score"], collection.scored[-3]["score"]
    for selector, value in (("#min-score", low), ("#max-score", high)):
        field = page.find_element("css selector", selector)
        field.clear()
        field.send_keys(value)
    inside = [row["path"] for row in collection.scored if float(low) <= float(row["score"]) <= float(high)]
    assert tile_paths(page) == inside and len(inside) == len(scores) - 3
    assert page.find_element("css selector", "#shown-count").text.startswith(f"{len(inside)} of {len(scores)}")
    tallest = max(page.find_elements("css selector", "#histogram rect.bar"),
                  key=lambda bar: int(bar.get_attribute("data-count")))
    page.execute_script("arguments[0].dispatchEvent(new MouseEvent('click'))", tallest)
    bin_low, bin_high = float(tallest.get_attribute("data-low")), float(tallest.get_attribute("data-high"))
    assert tile_paths(page) == [row["path"] for row in collection.scored
                                if bin_low <= float(row["score"]) <= bin_high]
    page.find_element("css selector", "#reset-range").click()
    assert len(tile_paths(page)) == len(scores)


def mean_difference(first: Image.Image, second: Image.Image) -> float:
    return float(np.abs(np.asarray(first.convert("RGB"), float) - np.asarray(second.convert("RGB"), float)).mean())


def test_the_large_view_shows_the_right_photo_and_map_and_keys_move_through_it(page, collection):
    from selenium.webdriver.common.keys import Keys

    order = [row["path"] for row in collection.scored]
    maps = mirrored_paths([row["path"] for row in collection.rows], "maps", ".png")
    tiles(page)[2].click()
    viewer = page.find_element("css selector", "#viewer")
    assert viewer.is_displayed()
    path = order[2]
    assert page.find_element("css selector", "#viewer-title").text == path
    assert page.find_element("css selector", "#viewer-path").get_attribute("value") == path
    photo = page.find_element("css selector", "#viewer-photo")
    assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth", photo) > 0
    with Image.open(collection.root / path) as original, Image.open(local_file(photo.get_attribute("src"))) as view:
        assert view.size == original.size  # photos under the view's size keep theirs
        assert mean_difference(view, original) < 6  # JPEG rounding only
        with Image.open(collection.root / order[3]) as other:
            assert mean_difference(view.resize(other.size), other) > 20
    overlay = page.find_element("css selector", "#viewer-map")
    assert overlay.is_displayed()
    with Image.open(collection.root / maps[path]) as drawn, \
            Image.open(local_file(overlay.get_attribute("src"))) as seen:
        assert mean_difference(seen, drawn.convert("RGB").crop((0, 0, *seen.size))) < 6
    assert overlay.rect == photo.rect  # laid exactly over the photo

    body = page.find_element("css selector", "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert page.find_element("css selector", "#viewer-path").get_attribute("value") == order[3]
    body.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    assert page.find_element("css selector", "#viewer-path").get_attribute("value") == order[1]
    body.send_keys("m")
    assert not overlay.is_displayed()
    body.send_keys("m")
    assert overlay.is_displayed()
    body.send_keys(Keys.ESCAPE)
    assert not viewer.is_displayed()


def test_arrow_keys_move_through_the_gallery_and_enter_opens(page, collection):
    from selenium.webdriver.common.keys import Keys

    page.set_window_size(700, 1000)  # several rows of tiles
    found = tiles(page)
    columns = sum(1 for tile in found if tile.location["y"] == found[0].location["y"])
    assert 1 < columns < len(found)
    page.execute_script("arguments[0].focus()", found[0])
    active = lambda: page.switch_to.active_element.get_attribute("data-path")  # noqa: E731
    page.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert active() == collection.scored[1]["path"]
    page.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    assert active() == collection.scored[1 + columns]["path"]
    page.switch_to.active_element.send_keys(Keys.ARROW_UP, Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    assert active() == collection.scored[0]["path"]
    page.switch_to.active_element.send_keys(Keys.ENTER)
    assert page.find_element("css selector", "#viewer-path").get_attribute("value") == collection.scored[0]["path"]


def not_blank(png: bytes) -> None:
    with Image.open(io.BytesIO(png)) as shot:
        pixels = np.asarray(shot.convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500


def test_the_page_draws_and_fits_a_phone_width(page):
    not_blank(page.get_screenshot_as_png())
    page.set_window_size(390, 844)
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert len(tiles(page, visible_only=True)) == 7
    not_blank(page.get_screenshot_as_png())


def test_paths_are_text_whatever_they_hold(browser, tmp_path):
    hostile = 'x/</script><script>document.title="pwned"</script>.jpg'
    rows = [ReportRow(hostile, 0.3, 10, 10), ReportRow("caf\udce9.jpg", 0.6),
            ReportRow("bad.jpg", None, error="<b>not</b> an {{DATA}} image")]
    result = build_report(rows, str(tmp_path / "r.html"), root=str(tmp_path))
    assert result.scored == 2 and len(result.problems) == 2  # neither image exists: tiles without pictures
    browser.get((tmp_path / "r.html").as_uri())
    assert browser.title == "Image quality report"
    assert tile_paths(browser) == [hostile, "caf\ufffd.jpg"]
    assert browser.find_element("css selector", "#failed-table td.error").text == "<b>not</b> an {{DATA}} image"


def write_as(rows, fmt: str, path: Path) -> None:
    results = [ScoreResult(index, row["path"], float(row["score"]) if row["score"] else None,
                           int(row["width"]) if row["width"] else None, int(row["height"]) if row["height"] else None,
                           row["error"]) for index, row in enumerate(rows)]
    if fmt == "parquet":
        writer = ParquetRowWriter(str(path))
        writer.write(results)
        writer.close()
        return
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = RowWriter(stream, fmt)
        writer.write(results)
        writer.close()


def page_body(path: Path) -> str:
    """The page from its summary on: everything but the title's note, which names the source."""
    return path.read_text(encoding="utf-8").split("<main>", 1)[1]


def test_qualiclip_report_gives_the_same_page_from_csv_jsonl_and_parquet(collection):
    root = collection.root
    write_as(collection.rows, "jsonl", root / "scores.jsonl")
    write_as(collection.rows, "parquet", root / "scores.parquet")
    bodies = {}
    for name in ("scores.csv", "scores.jsonl", "scores.parquet"):
        done = run("qualiclip_infer.report", name, "-o", f"{name}.out/report.html", "--maps", "maps", "-q", cwd=root)
        assert done.returncode == 0 and not done.stderr, done.stderr
        bodies[name] = page_body(root / f"{name}.out" / "report.html")
        pictures = sorted(p.relative_to(root / f"{name}.out") for p in (root / f"{name}.out").rglob("*.jpg"))
        assert len(pictures) == 3 * 7  # thumbnail, view and map of each scored photo
    assert bodies["scores.csv"] == bodies["scores.jsonl"] == bodies["scores.parquet"] == page_body(collection.page)
    data = json.loads(bodies["scores.csv"].split('type="application/json">', 1)[1].split("</script>", 1)[0])
    assert sorted(row[0] for row in data["rows"]) == sorted(row["path"] for row in collection.scored)


def test_qualiclip_report_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "other.csv").write_text("name,value\na,1\n")
    for name, cause in (("missing.csv", "No such file"), ("other.csv", "no column 'path', 'score'")):
        done = run("qualiclip_infer.report", name, cwd=tmp_path)
        assert done.returncode == 2 and cause in done.stderr and name in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.html"))


def test_qualiclip_eval_report_shows_scatter_metrics_and_disagreements(browser, collection):
    root = collection.root
    scores = np.array([float(row["score"]) for row in collection.scored])
    # Opinion scores that follow the scores but for two images rated far off, one each way.
    mos = 1 + 4 * (scores - scores.min()) / (scores.max() - scores.min())
    mos[1], mos[-2] = 4.9, 1.1
    lines = ["path,mos"] + [f"{row['path']},{value:.3f}" for row, value in zip(collection.scored, mos)]
    (root / "mos.csv").write_text("\n".join(lines) + "\n")
    done = run("qualiclip_infer.eval", "mos.csv", "--scores", "scores.csv", "-o", "eval/eval.json", "--report",
               "eval/eval.html", "--resamples", "50", "-q", cwd=root)
    assert done.returncode == 0, done.stderr
    report = json.loads((root / "eval" / "eval.json").read_text())
    browser.set_window_size(1200, 1400)
    browser.get((root / "eval" / "eval.html").as_uri())
    assert len(browser.find_elements("css selector", "svg.scatter circle")) == len(scores)
    assert browser.find_elements("css selector", "svg.scatter polyline.curve[data-form=logistic4]")
    cells = [cell.text for cell in browser.find_elements("css selector", "#metrics-table tbody td")]
    srcc = report["models"][0]["metrics"]["srcc"]
    assert cells[2] == f"{srcc['value']:.4f} [{srcc['ci'][0]:.4f}, {srcc['ci'][1]:.4f}]"
    b1, b2, b3, b4 = report["models"][0]["fits"]["logistic4"]["params"]
    gap = (b1 - b2) / (1 + np.exp(-(scores - b3) / b4)) + b2 - np.round(mos, 3)
    count = len(scores) // 2
    lower = np.argsort(gap)
    for kind, order in (("model_higher", np.argsort(-gap)), ("model_lower", lower)):
        shown = [tile.get_attribute("data-path")
                 for tile in browser.find_elements("css selector", f".disagreements[data-kind={kind}] .tile")]
        assert shown == [collection.scored[i]["path"] for i in order[:count]]
    first = browser.find_element("css selector", ".disagreements[data-kind=model_lower] .tile")
    assert first.find_element("css selector", "img").get_attribute("src")
    first.click()
    expected = collection.scored[lower[0]]["path"]
    assert browser.find_element("css selector", "#viewer-path").get_attribute("value") == expected
    not_blank(browser.get_screenshot_as_png())
