"""Keeping or dropping samples by score: the thresholds, and writing the filtered dataset (``qualiclip-filter``).

A *unit* is what is kept or dropped whole: a WebDataset sample (every member sharing a key; its score is the lowest
score of its image members), a Parquet row, or an image file. Inputs are only read (once more first when scored
on the fly): once to score each unit from the scores, once to write the kept units, in input order, to new files:

- tar shards ``OUT/00000.tar``, ``OUT/00001.tar``... of ``shard_size`` samples, every member kept and the score
  added to the sample's ``.json`` under ``score_key`` (a ``KEY.json`` is added where a sample has none);
- Parquet files ``OUT/00000.parquet``... of ``shard_size`` rows with a ``score_key`` column;
- ``OUT/kept-paths.txt``: the kept image files, one path a line;
- ``OUT/manifest.json`` (counts, the rule and the threshold actually used, the files written) and ``OUT/failed.csv``
  (units that could not be scored: never kept, counted as failed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .atomic import write_text_atomically
from .messages import first_line
from .output import TEXT_ENCODING, TEXT_ERRORS
from .score_files import ScoresFileError, read_score_rows
from .sources.entries import SOURCE_SEPARATOR, SourceError
from .sources.patterns import SourcePlan
from .sources.tar import Sample, is_image_member, iter_samples
from .sources.writers import ParquetPartWriter, TarShardWriter
from .uris import is_uri, open_input

SCORE_KEY = "qualiclip"
SHARD_SIZE = 10_000
Saved = Tuple[Optional[float], str]  # a score, or None and why


@dataclass(frozen=True)
class Rule:
    """What is kept: scores within ``[min_score, max_score]`` (either may be ``None``), or the best
    ``keep_fraction`` of the scored units by rank (``round(keep_fraction * scored)`` units, ties broken by input
    order so the count is exact)."""

    min_score: Optional[float] = None
    max_score: Optional[float] = None
    keep_fraction: Optional[float] = None

    def check(self) -> None:
        """Raises :class:`ValueError` (one line) for a rule that keeps nothing by construction or is ambiguous."""
        if self.keep_fraction is not None:
            if self.min_score is not None or self.max_score is not None:
                raise ValueError("--keep-fraction cannot be combined with --min-score or --max-score")
            if not 0 <= self.keep_fraction <= 1:
                raise ValueError(f"--keep-fraction must be within [0, 1], got {self.keep_fraction}")
        elif self.min_score is None and self.max_score is None:
            raise ValueError("give --min-score, --max-score or --keep-fraction")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"--min-score {self.min_score} is above --max-score {self.max_score}")


def read_score_file(path: str) -> Dict[str, Saved]:
    """The rows of a ``qualiclip-score`` output (csv, jsonl, json or Parquet), by :func:`match_name`.

    Raises:
        SourceError: The file cannot be read or is not such an output.
    """
    try:
        rows = read_score_rows(path)
    except ScoresFileError as error:
        raise SourceError(f"--scores {error}") from None
    return {match_name(row.name): (row.score, "" if row.ok else row.error or "not scored") for row in rows}


def match_name(name: str) -> str:
    """How a row's path is matched to an input: a local file (or shard) part made absolute, so the scores file and
    the filter's PATHs need not be spelled alike."""
    source, sep, member = name.partition(SOURCE_SEPARATOR)
    return (source if is_uri(source) else os.path.abspath(source)) + sep + member


# ---------------------------------------------------------------------------------------------------------------
# Scoring units


@dataclass
class Unit:
    """A sample, row or image: its name (for ``failed.csv``), its score, or why it has none."""

    name: str
    score: Optional[float]
    error: str = ""


def _lookup(saved: Dict[str, Saved], name: str) -> Saved:
    return saved.get(match_name(name), (None, "not in the scores"))


def sample_unit(sample: Sample, saved: Dict[str, Saved]) -> Unit:
    """A WebDataset sample's unit: the lowest score of its image members; failed if any is unscored."""
    name = f"{sample.shard}{SOURCE_SEPARATOR}{sample.key}"
    if sample.error:
        return Unit(name, None, sample.error)
    images = [member.name for member, _ in sample.members if is_image_member(member.name)]
    if not images:
        return Unit(name, None, "no image member")
    results = [(member, *_lookup(saved, f"{sample.shard}{SOURCE_SEPARATOR}{member}")) for member in images]
    failed = [f"{member}: {error}" for member, score, error in results if score is None]
    if failed:
        return Unit(name, None, "; ".join(failed))
    return Unit(name, min(score for _, score, _ in results))


def iter_units(plan: SourcePlan, saved: Dict[str, Saved]) -> Iterator[Unit]:
    """Every unit of the plan's inputs, in input order, with its score from ``saved``."""
    for kind, path in plan.inputs:
        if kind == "tar":
            yield from (sample_unit(sample, saved) for sample in iter_samples(path, open_input))
        elif kind == "parquet":
            try:
                rows = _parquet_rows(path)
            except SourceError as error:
                yield Unit(path, None, str(error))
                continue
            names = (f"{path}{SOURCE_SEPARATOR}{row}" for row in range(rows))
            yield from (Unit(name, *_lookup(saved, name)) for name in names)
        else:
            yield Unit(path, *_lookup(saved, path))


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    try:
        with open_input(path) as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    except Exception as error:  # pyarrow's own error types for files that are not Parquet
        raise SourceError(f"{path}: not a readable Parquet file: {first_line(error)}") from error


# ---------------------------------------------------------------------------------------------------------------
# Selecting


@dataclass
class Selection:
    """Which units are kept (``keep[i]`` for the i-th unit), with the counts and the threshold used."""

    keep: bytearray
    counts: Dict[str, int]
    threshold: Dict[str, Optional[float]]


def select(scores: List[Optional[float]], rule: Rule) -> Selection:
    """Applies ``rule`` to the units' scores (``None``: failed, never kept)."""
    keep = bytearray(len(scores))
    scored = [index for index, score in enumerate(scores) if score is not None]
    if rule.keep_fraction is not None:
        count = math.floor(rule.keep_fraction * len(scored) + 0.5)
        ranked = sorted(scored, key=lambda index: (-scores[index], index))[:count]
        for index in ranked:
            keep[index] = 1
        low = scores[ranked[-1]] if ranked else None
        threshold = {"min_score": low, "max_score": None, "kept_by_rank": count}
    else:
        for index in scored:
            keep[index] = (rule.min_score is None or scores[index] >= rule.min_score) and (
                rule.max_score is None or scores[index] <= rule.max_score)
        threshold = {"min_score": rule.min_score, "max_score": rule.max_score}
    kept = sum(keep)
    counts = {"in": len(scores), "kept": kept, "dropped": len(scored) - kept, "failed": len(scores) - len(scored)}
    return Selection(keep, counts, threshold)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def write_kept(plan: SourcePlan, selection: Selection, scores: List[Optional[float]], folder: str, *,
               shard_size: int = SHARD_SIZE, score_key: str = SCORE_KEY) -> List[Dict[str, Any]]:
    """Writes the kept units of the plan's inputs into ``folder``; returns the files written with their counts.

    The units are enumerated as :func:`iter_units` enumerates them, so ``scores[i]`` and ``selection.keep[i]``
    belong to the same unit.
    """
    tars = TarShardWriter(folder, shard_size, score_key)
    parquets = ParquetPartWriter(folder, shard_size, score_key)
    paths: List[str] = []
    index = 0
    try:
        for kind, path in plan.inputs:
            if kind == "tar":
                for sample in iter_samples(path, open_input):
                    if selection.keep[index]:
                        tars.write(sample, scores[index])
                    index += 1
            elif kind == "parquet":
                index = _write_parquet_rows(path, selection, scores, index, parquets)
            else:
                if selection.keep[index]:
                    paths.append(path)
                index += 1
    except BaseException:
        tars.discard()
        parquets.discard()
        raise
    tars.close()
    parquets.close()
    files = tars.files + parquets.files
    if paths:
        listing = os.path.join(folder, "kept-paths.txt")
        write_text_atomically(listing, "".join(f"{path}\n" for path in paths), TEXT_ENCODING, TEXT_ERRORS)
        files.append({"file": listing, "count": len(paths)})
    return files


def _write_parquet_rows(path: str, selection: Selection, scores: List[Optional[float]], index: int,
                        writer: ParquetPartWriter) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = _parquet_rows(path)
    except SourceError:
        return index + 1  # one failed unit, as iter_units counted it
    try:
        with open_input(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
                keep = [bool(selection.keep[index + row]) for row in range(batch.num_rows)]
                if any(keep):
                    kept = pa.Table.from_batches([batch]).filter(pa.array(keep))
                    writer.write(kept, [scores[index + row] for row in range(batch.num_rows) if keep[row]])
                index += batch.num_rows
                rows -= batch.num_rows
    except Exception:  # a corrupt row group: its rows have no score (failed), so none of them is kept
        pass
    return index + max(rows, 0)


def write_manifest(folder: str, manifest: Dict[str, Any], failed: List[Unit]) -> None:
    """``manifest.json`` and ``failed.csv`` (name, error) in ``folder``."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["name", "error"])
    writer.writerows([unit.name, unit.error] for unit in failed)
    write_text_atomically(os.path.join(folder, "failed.csv"), table.getvalue(), TEXT_ENCODING, TEXT_ERRORS)
    # Last: a folder with a manifest is a finished run.
    write_text_atomically(os.path.join(folder, "manifest.json"),
                          json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

