"""Building a report from rows or a scores file, as the commands run it: what could not be made is returned, and a
page that cannot be written at all is one :class:`ReportError`."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ..files import mirrored_paths
from ..messages import first_line
from ..score_files import ScoresFileError
from .page import ReportResult, build_report
from .rows import ReportRow, read_rows


class ReportError(ValueError):
    """A report that could not be written; the message is one line naming the file and the cause."""


def publish_report(source: Union[Sequence[ReportRow], str, Any], page: str, *,
                   build: Optional[Callable[..., ReportResult]] = None, **options: Any) -> ReportResult:
    """Builds the page ``page`` from ``source``.

    Args:
        source: The rows, or a scores file to read them from (after a ``--resume`` run: the whole file); with
            ``build``, what it takes (an evaluation).
        page: The HTML file.
        build: Builds the page from ``source`` (default: :func:`~qualiclip_infer.report.build_report`).
        options: Further arguments of the builder.

    Returns:
        The result; its ``problems`` name the pictures that could not be made.

    Raises:
        ReportError: No page could be written.
    """
    try:
        if build is not None:
            return build(source, page, **options)
        return build_report(read_rows(source) if isinstance(source, str) else source, page, **options)
    except (OSError, ScoresFileError) as error:
        where = getattr(error, "filename", None) or page
        cause = getattr(error, "strerror", None) or first_line(error)
        raise ReportError(f"report not written: {where}: {cause}") from error


def map_files(rows: Sequence[ReportRow], folder: str, root: Optional[str] = None) -> Mapping[str, str]:
    """Each row's map file under a ``--maps`` folder, laid out as ``qualiclip-score`` lays them out (from all the
    paths it scored: a file that lists them all gives the same layout)."""
    paths = [row.path for row in rows]
    sources = [path if root is None or os.path.isabs(path) else os.path.join(root, path) for path in paths]
    placed = mirrored_paths(sources, folder, ".png")
    return {path: placed[source] for path, source in zip(paths, sources)}


# A report's pictures that could not be made are named up to this many, then counted.
PROBLEMS_SHOWN = 5


def publish_for_command(source: Any, page: str, *, say: Callable[[str], None], quiet: bool,
                        **options: Any) -> Optional[bool]:
    """:func:`publish_report` as a command's ``--report`` step: messages go to ``say``, one line each.

    Args:
        source, page, options: As for :func:`publish_report`.
        say: Receives each message (the command prefixes its name).
        quiet: Only errors and missing pictures are said.

    Returns:
        ``True`` when written with every picture, ``False`` when some pictures are missing, ``None`` when no page
        could be written (the error is said).
    """
    try:
        result = publish_report(source, page, **options)
    except ReportError as error:
        say(f"error: {error}")
        return None
    for problem in result.problems[:PROBLEMS_SHOWN]:
        say(problem)
    if len(result.problems) > PROBLEMS_SHOWN:
        say(f"... and {len(result.problems) - PROBLEMS_SHOWN} more pictures not made")
    if not quiet:
        say(f"report: {result.page} ({result.scored} of {result.images} images scored, "
            f"{result.previews_made} pictures made)")
    return not result.problems
