"""Writing the report page: one self-contained HTML file (styles, script and data inline; no network) and its
pictures in a ``report_files/`` folder beside it."""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .._version import __version__
from ..colors import colorize, colormap_table
from ..output import SCORE_DECIMALS
from .previews import Preview, make_previews
from .rows import ReportRow
from .summary import histogram_svg, summarise, summary_html

FILES_SUFFIX = "_files"
_COLUMNS = ("path", "score", "width", "height", "thumbnail", "view", "map", "colour", "mos", "percentile", "human")
_GRADIENT_STOPS = 9


@dataclass(frozen=True)
class ReportResult:
    """What building a report did.

    Attributes:
        page: The HTML file written.
        images: Rows in the report; ``scored`` of them have a score.
        scored: Rows with a score.
        previews_made: Images decoded for pictures (the others' pictures were up to date).
        problems: ``path: reason`` for each picture that could not be made; those tiles show no picture.
    """

    page: str
    images: int
    scored: int
    previews_made: int
    problems: List[str]


def files_folder(page: str) -> str:
    """The name of the pictures' folder of a page: ``report.html`` -> ``report_files``."""
    return os.path.splitext(os.path.basename(page))[0] + FILES_SUFFIX


def shown(text: str) -> str:
    """A path as a page shows it: bytes that are not UTF-8 (kept as surrogates when read) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def build_report(rows: Sequence[ReportRow], page: str, *, title: Optional[str] = None,
                 maps: Optional[Mapping[str, str]] = None, root: Optional[str] = None, workers: Optional[int] = None,
                 mos_label: str = "MOS", note: str = "", evaluation_html: str = "") -> ReportResult:
    """Writes the report of scored rows: the page and its pictures.

    Args:
        rows: The images, scored or not (see :func:`~qualiclip_infer.report.read_rows`).
        page: The HTML file to write; pictures go to the ``<name>_files`` folder beside it.
        title: The page's title (default: "Image quality report").
        maps: Per image path, its quality map PNG (``qualiclip-score --maps``), shown over the large view.
        root: The folder relative image paths are relative to (default: the current folder).
        workers: Threads decoding images for the pictures.
        mos_label: How the calibrated ``mos`` column is named on tiles (e.g. ``MOS (KonIQ-10k)``).
        note: A line under the title (where the scores came from).
        evaluation_html: An evaluation section (``qualiclip-eval --report`` builds one: :mod:`qualiclip_infer.eval.report_page`).

    Returns:
        The :class:`ReportResult`.

    Raises:
        OSError: The page or its folder cannot be written.
    """
    page_dir = os.path.dirname(os.path.abspath(page))
    os.makedirs(page_dir, exist_ok=True)
    folder = files_folder(page)
    pictures = make_previews(rows, page_dir, folder, maps=maps, root=root, workers=workers)
    scored = [row for row in rows if row.score is not None]
    failed = [row for row in rows if row.score is None]
    title = title or "Image quality report"
    values = {
        "VERSION": __version__, "TITLE": html.escape(title), "NOTE": html.escape(note),
        "GRADIENT": _gradient(), "STYLE": _asset("page.css"), "SCRIPT": _asset("page.js"),
        "SUMMARY": summary_html(summarise(rows)), "HISTOGRAM": histogram_svg([row.score for row in scored]),
        "EVALUATION": evaluation_html, "FAILED_COUNT": str(len(failed)), "FAILED": failed_html(failed),
        "DATA": _data(scored, pictures.previews, mos_label),
    }
    # One pass, so that text put in (a path, say) is never searched for placeholders itself.
    text = re.sub(r"\{\{([A-Z_]+)\}\}", lambda match: values[match[1]], _asset("page.html"))
    with open(page, "w", encoding="utf-8") as file:
        file.write(text)
    return ReportResult(page, len(rows), len(scored), pictures.made, pictures.failures)


def failed_html(failed: Sequence[ReportRow]) -> str:
    """The table of inputs that were not scored, with their errors."""
    if not failed:
        return '<p class="note">Every image was scored.</p>'
    lines = "".join(f'<tr><td class="path">{html.escape(shown(row.path))}</td>'
                    f'<td class="error">{html.escape(shown(row.error))}</td></tr>' for row in failed)
    return ('<div class="table-wrap"><table id="failed-table"><thead><tr><th>path</th><th>error</th></tr></thead>'
            f'<tbody>{lines}</tbody></table></div>')


def _data(scored: Sequence[ReportRow], previews: Mapping[str, Preview], mos_label: str) -> str:
    colours = colorize([row.score for row in scored]) if scored else []
    records: List[List[Any]] = []
    for row, colour in zip(scored, colours):
        preview = previews.get(row.path, Preview("", ""))
        records.append([shown(row.path), round(row.score, SCORE_DECIMALS), row.width, row.height, preview.thumbnail,
                        preview.view, preview.map, "#%02x%02x%02x" % tuple(colour), row.mos, row.percentile, row.human])
    payload: Dict[str, Any] = {"columns": list(_COLUMNS), "rows": records, "mos_label": mos_label}
    # Inside <script>, "</" could end the element early; JSON allows the escaped form.
    return json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def _gradient() -> str:
    table = colormap_table()
    stops = [table[round(k * (len(table) - 1) / (_GRADIENT_STOPS - 1))] for k in range(_GRADIENT_STOPS)]
    return ", ".join("#%02x%02x%02x" % tuple(colour) for colour in stops)


def _asset(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")
