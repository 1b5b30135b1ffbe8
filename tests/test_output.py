"""Output files and ``--resume``: exotic paths round-trip, killed runs resume exactly, foreign files stay untouched.

Files are read back here with the csv module over a file opened with ``newline=""`` and with ``bytes.split(b"\\n")``
for jsonl, independently of the reader under test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest
from helpers import natural_image, save_image

from qualiclip_infer.engine import ScoreResult
from qualiclip_infer.output import (COLUMNS, RESUMABLE_FORMATS, OutputFileError, RowWriter, choose_format,
                                    open_output, prepare_resume)

SUBPROCESS_TIMEOUT = 180
# Characters that line splitting, csv quoting or text decoding can get wrong. str.splitlines breaks at \n \r \v \f
# \x1c \x1d \x1e \x85 \u2028 \u2029; b"\xff" is not UTF-8 (a surrogate escape, as os.fsdecode gives it).
EXOTIC = ["plain.jpg", "com,ma.jpg", 'quo"te.jpg', '"', '""', ",", "new\nline.jpg", "\n", "cr\rname.jpg",
          "crlf\r\nname.jpg", "ls\u2028ps\u2029.jpg", "nel\x85.jpg", "fs\x1cgs\x1drs\x1e.jpg", "vt\x0bff\x0c.jpg",
          " lead.jpg", "trail.jpg ", "  ", "tab\t.jpg", "日本語 ünï.jpg", os.fsdecode(b"bad\xff\xfe.jpg"),
          '{"path": "x"}', "null", "path,score,width,height,error"]


def Result(name: str, score: Optional[float], width: Optional[int], height: Optional[int],
           error: str = "") -> ScoreResult:
    """A row as the engine yields it."""
    return ScoreResult(0, name, score, width, height, error)


def exotic_rows() -> List[Result]:
    rows = []
    for index, name in enumerate(EXOTIC):
        if index % 5 == 3:
            rows.append(Result(name, None, 640 if index % 2 else None, 480 if index % 2 else None,
                               'cannot decode: "bad, broken" data'))
        else:
            rows.append(Result(name, round(0.05 + index / 40, 6), 100 + index, 60 + index))
    return rows


def write(path: Path, fmt: str, rows, *, append: bool = False, header: bool = True) -> None:
    with open_output(os.fspath(path), append=append) as stream:
        writer = RowWriter(stream, fmt, header=header)
        writer.write(rows)
        writer.close()


def parse(path: Path, fmt: str) -> List[dict]:
    """Every row of a file, with the values as written (csv cells are strings)."""
    return parse_bytes(path.read_bytes(), fmt)


def parse_bytes(data: bytes, fmt: str) -> List[dict]:
    if fmt == "csv":
        # As csv files are meant to be read: newline="" (universal line ends, none translated).
        reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""), strict=True)
        assert next(reader) == list(COLUMNS)
        rows = list(reader)
        assert all(len(row) == len(COLUMNS) for row in rows)
        return [dict(zip(COLUMNS, row)) for row in rows]
    lines = data.split(b"\n")
    assert lines[-1] == b"", "the file must end with a newline"
    return [json.loads(line.decode("utf-8", "surrogateescape")) for line in lines[:-1]]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_ends(fmt: str, rows) -> List[int]:
    """Byte offsets where the header and each record of a complete file end, from writing them one at a time."""
    ends = [0]
    for row in ([None] if fmt == "csv" else []) + list(rows):
        stream = _Bytes()
        writer = RowWriter(stream, fmt, header=row is None)
        if row is not None:
            writer.write([row])
        ends.append(ends[-1] + len(stream.data))
    return ends


class _Bytes:
    """A text stream that keeps what is written as UTF-8 with surrogate escapes, like an output file."""

    def __init__(self):
        self.data = b""

    def write(self, text: str) -> None:
        self.data += text.encode("utf-8", "surrogateescape")

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# Writing and reading back


@pytest.mark.parametrize("fmt", RESUMABLE_FORMATS)
def test_every_path_round_trips_and_is_recognised(tmp_path, fmt):
    rows = exotic_rows()
    out = tmp_path / f"rows.{fmt}"
    write(out, fmt, rows)
    written = parse(out, fmt)
    assert [row["path"] for row in written] == EXOTIC
    for row, result in zip(written, rows):
        if fmt == "csv":
            assert (row["score"], row["width"], row["height"], row["error"]) == (
                "" if result.score is None else f"{result.score:.8f}", "" if result.width is None else
                str(result.width), "" if result.height is None else str(result.height), result.error)
        else:
            assert (row["score"], row["width"], row["height"], row["error"]) == (
                result.score, result.width, result.height, result.error or None)
    before = digest(out)
    assert prepare_resume(os.fspath(out), fmt) == (set(EXOTIC), True)
    assert digest(out) == before


def test_json_and_table_formats(tmp_path):
    rows = exotic_rows()[:3]
    out = tmp_path / "rows.json"
    write(out, "json", rows)
    assert [row["path"] for row in json.loads(out.read_text())] == [row.name for row in rows]
    write(out, "json", [])
    assert json.loads(out.read_text()) == []
    write(out, "table", [Result("a.jpg", 0.123456, 64, 48), Result("b.jpg", None, None, None, "broken")])
    assert out.read_text().splitlines()[1:] == [
        "a.jpg" + " " * 35 + "  0.1235     64      48", "b.jpg" + " " * 35 + "                         broken"]


def test_format_from_option_suffix_or_terminal():
    assert choose_format("jsonl", "out.csv", True) == "jsonl"
    assert [choose_format(None, name, True) for name in ("a.CSV", "a.jsonl", "a.ndjson", "a.json", "a.txt")] == [
        "csv", "jsonl", "jsonl", "json", "csv"]
    assert (choose_format(None, None, True), choose_format(None, None, False)) == ("table", "csv")


# ---------------------------------------------------------------------------------------------------------------
# Resuming after a kill


@pytest.mark.parametrize("fmt", RESUMABLE_FORMATS)
def test_a_run_killed_at_any_byte_resumes_with_every_path_once(tmp_path, fmt):
    """Cut a complete file at random offsets (as a kill leaves it), resume, append the rest: the same file."""
    rows = exotic_rows()
    out = tmp_path / f"rows.{fmt}"
    write(out, fmt, rows)
    full = out.read_bytes()
    ends = record_ends(fmt, rows)
    assert ends[-1] == len(full)
    rng = random.Random(20240607)
    offsets = rng.sample(range(len(full) + 1), 50)
    # Also every byte of the record whose path holds a newline (in csv, a quoted field spanning two lines).
    multiline = EXOTIC.index("new\nline.jpg") + (1 if fmt == "csv" else 0)
    offsets += range(ends[multiline], ends[multiline + 1] + 1)
    for offset in offsets:
        out.write_bytes(full[:offset])
        names, has_content = prepare_resume(os.fspath(out), fmt)
        kept = out.read_bytes()
        # What stays is the longest run of whole records; a record missing only its final newline is whole when
        # that cannot hide a cut (jsonl rows end with "}", the csv header is known).
        whole = [end for end in ends if end <= offset or (end == offset + 1 and (fmt == "jsonl" or end == ends[1]))]
        assert kept == full[:max(whole)], offset
        first_end = 2 if fmt == "csv" else 1  # ends[first_end] is where the first row ends
        done = [row.name for index, row in enumerate(rows) if ends[index + first_end] <= len(kept)]
        assert names == set(done) and has_content == (len(kept) > 0)
        write(out, fmt, [row for row in rows if row.name not in names], append=True, header=not has_content)
        assert out.read_bytes() == full, offset
        assert [row["path"] for row in parse(out, fmt)] == EXOTIC


def test_a_csv_row_cut_inside_a_quoted_newline_never_swallows_later_rows(tmp_path):
    out = tmp_path / "rows.csv"
    header_and_one = b"path,score,width,height,error\na.jpg,0.50000000,64,64,\n"
    out.write_bytes(header_and_one + b'"b\n')  # killed right after the newline inside b's quoted path
    assert prepare_resume(os.fspath(out), "csv") == ({"a.jpg"}, True)
    assert out.read_bytes() == header_and_one
    write(out, "csv", [Result("b\nc.jpg", 0.25, 64, 64), Result("d.jpg", 0.75, 64, 64)], append=True, header=False)
    assert [row["path"] for row in parse(out, "csv")] == ["a.jpg", "b\nc.jpg", "d.jpg"]


# ---------------------------------------------------------------------------------------------------------------
# Files that are not ours

JSONL_ROW = b'{"path": "a.jpg", "score": 0.5, "width": 64, "height": 48, "error": null}'
CSV_HEADER = b"path,score,width,height,error\n"
FOREIGN = {
    "csv": {
        "other header": b"name,score\na.jpg,0.5\n",
        "text": b"hello world\nsecond line\n",
        "one line, no newline": b"hello world",
        "a row without header, no newline": b"a.jpg,0.5,64,48,",
        "open quote, no header": b'"path,score,width,height,error\n',
        "json array": b"[\n" + JSONL_ROW + b"\n]\n",
        "jsonl": JSONL_ROW + b"\n",
        "too few columns": CSV_HEADER + b"a.jpg,0.5,64\n",
        "a bad row before a cut one": CSV_HEADER + b"a.jpg,0.5,64\n" + b'"b.jpg\n',
        "blank line": CSV_HEADER + b"a.jpg,0.5,64,48,\n\nb.jpg,0.5,64,48,\n",
        "score not a number": CSV_HEADER + b"a.jpg,high,64,48,\n",
        "width not a whole number": CSV_HEADER + b"a.jpg,0.5,64.5,48,\n",
        "text after a closing quote": CSV_HEADER + b'"a"b.jpg,0.5,64,48,\nc.jpg,0.5,64,48,\n',
        "bare carriage return": CSV_HEADER + b"a\rb.jpg,0.5,64,48,\nc.jpg,0.5,64,48,\n",
        "binary": random.Random(1).randbytes(3000),
        "png": b"\x89PNG\r\n\x1a\n" + random.Random(2).randbytes(500),
    },
    "jsonl": {
        "text": b"hello world\n",
        "one line, no newline": b"hello world",
        "other keys": b'{"name": "a.jpg", "score": 0.5}\n',
        "extra key": JSONL_ROW[:-1] + b', "model": "x"}\n',
        "json array": b"[\n" + JSONL_ROW + b"\n]\n",
        "json array on one line": b"[" + JSONL_ROW + b"]\n",
        "null": b"null\n",
        "csv": CSV_HEADER + b"a.jpg,0.5,64,48,\n",
        "score not a number": JSONL_ROW.replace(b"0.5", b'"0.5"') + b"\n",
        "width not a whole number": JSONL_ROW.replace(b"64", b"64.5") + b"\n",
        "a bad line before a cut one": JSONL_ROW + b"\n{}\n" + JSONL_ROW[:20],
        "last line not a row": JSONL_ROW + b"\n" + b'{"other": 1}',
        "blank line": JSONL_ROW + b"\n\n" + JSONL_ROW + b"\n",
        "binary": random.Random(3).randbytes(3000),
    },
}


@pytest.mark.parametrize("fmt, kind", [(fmt, kind) for fmt, cases in FOREIGN.items() for kind in cases])
def test_a_foreign_file_is_refused_and_left_byte_identical(tmp_path, fmt, kind):
    out = tmp_path / f"rows.{fmt}"
    out.write_bytes(FOREIGN[fmt][kind])
    before = digest(out)
    with pytest.raises(OutputFileError) as caught:
        prepare_resume(os.fspath(out), fmt)
    message = str(caught.value)
    assert os.fspath(out) in message and f"not a qualiclip-score {fmt} output" in message
    assert len(message.splitlines()) == 1 and "\r" not in message
    assert digest(out) == before


@pytest.mark.parametrize("fmt", RESUMABLE_FORMATS)
def test_missing_and_empty_files_start_afresh(tmp_path, fmt):
    out = tmp_path / f"rows.{fmt}"
    assert prepare_resume(os.fspath(out), fmt) == (set(), False)
    assert not out.exists()
    out.write_bytes(b"")
    assert prepare_resume(os.fspath(out), fmt) == (set(), False)


def test_a_one_line_file_without_its_newline_is_not_wiped(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_bytes(JSONL_ROW)  # a whole row: only the newline is missing
    assert prepare_resume(os.fspath(out), "jsonl") == ({"a.jpg"}, True)
    assert out.read_bytes() == JSONL_ROW + b"\n"
    out = tmp_path / "rows.csv"
    out.write_bytes(CSV_HEADER[:-1])
    assert prepare_resume(os.fspath(out), "csv") == (set(), True)
    assert out.read_bytes() == CSV_HEADER
    out.write_bytes(CSV_HEADER + b"a.jpg,0.50000000,64,48,\nb.jpg,0.4")
    assert prepare_resume(os.fspath(out), "csv") == ({"a.jpg"}, True)
    assert out.read_bytes() == CSV_HEADER + b"a.jpg,0.50000000,64,48,\n"


def test_an_unreadable_or_unwritable_file_is_a_one_line_error(tmp_path):
    folder = tmp_path / "rows.csv"
    folder.mkdir()
    with pytest.raises(OutputFileError, match="rows.csv"):
        prepare_resume(os.fspath(folder), "csv")
    with pytest.raises(OutputFileError, match="^-o .*rows.csv"):
        open_output(os.fspath(folder))


# ---------------------------------------------------------------------------------------------------------------
# The CLI, end to end

needs_posix_names = pytest.mark.skipif(sys.platform != "linux" or sys.getfilesystemencoding() != "utf-8",
                                       reason="file names with newlines and raw bytes need Linux and UTF-8")


def run_cli(*args) -> subprocess.CompletedProcess:
    # Strict standard streams, as under a UTF-8 locale such as en_US.UTF-8 (the C locales escape undecodable bytes).
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "qualiclip_infer", *map(os.fsencode, args)], capture_output=True,
                          env=environment, timeout=SUBPROCESS_TIMEOUT)


@pytest.fixture(scope="module")
def exotic_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exotic")
    names = ["com,ma.jpg", 'quo"te.jpg', "new\nline.jpg", "sep\u2028ar.jpg", "nel\x85.jpg", "cr\rname.jpg",
             " lead.jpg", os.fsdecode(b"bad\xff.jpg"), "plain.jpg"]
    for index, name in enumerate(names):
        save_image(folder / name, natural_image(64 + 8 * (index % 2), 48, index))
    return folder


def assert_same_rows(rows: List[dict], expected: dict) -> None:
    """Rows match by path; scores to 1e-5, as a batch of other images can change the last float32 digits."""
    assert len(rows) == len(expected)
    for row in rows:
        other = expected[row["path"]]
        assert float(row["score"]) == pytest.approx(float(other["score"]), abs=1e-5)
        assert [str(row[column] or "") for column in ("width", "height", "error")] == [
            str(other[column] or "") for column in ("width", "height", "error")]


@needs_posix_names
def test_cli_resumes_a_folder_of_exotic_names_with_each_image_once(exotic_folder, tiny_checkpoint, tmp_path):
    every = sorted(os.fspath(exotic_folder / name) for name in os.listdir(exotic_folder))
    # Standard output (csv, not a terminal) carries the non-UTF-8 name as its raw bytes.
    result = run_cli(exotic_folder, "--weights", tiny_checkpoint)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"bad\xff.jpg" in result.stdout
    full = {row["path"]: row for row in parse_bytes(result.stdout, "csv")}
    assert sorted(full) == every and len(parse_bytes(result.stdout, "csv")) == len(every)

    out = tmp_path / "rows.csv"
    newline_row = result.stdout.index(b'"' + os.fsencode(exotic_folder) + b"/new\n")
    out.write_bytes(result.stdout[:newline_row + len(os.fsencode(exotic_folder)) + 6])  # killed inside the quote
    kept = parse_bytes(result.stdout[:newline_row], "csv")
    resumed = run_cli(exotic_folder, "--weights", tiny_checkpoint, "-o", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    assert f"resuming: {len(kept)} images already in".encode() in resumed.stderr
    rows = parse(out, "csv")
    assert rows[:len(kept)] == kept  # the rows before the cut are kept as they were
    assert sorted(row["path"] for row in rows) == every  # each image exactly once
    assert_same_rows(rows, full)

    # jsonl: a first run, then one killed in the middle of the row of the name with U+2028.
    out = tmp_path / "rows.jsonl"
    assert run_cli(exotic_folder, "--weights", tiny_checkpoint, "-o", out).returncode == 0
    complete = out.read_bytes()
    first = {row["path"]: row for row in parse(out, "jsonl")}
    assert sorted(first) == every
    cut = complete.index("sep\u2028ar".encode()) + 5
    out.write_bytes(complete[:cut])
    kept = parse_bytes(complete[:complete.rindex(b"\n", 0, cut) + 1], "jsonl")
    resumed = run_cli(exotic_folder, "--weights", tiny_checkpoint, "-o", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    assert f"resuming: {len(kept)} images already in".encode() in resumed.stderr
    rows = parse(out, "jsonl")
    assert rows[:len(kept)] == kept
    assert sorted(row["path"] for row in rows) == every
    assert_same_rows(rows, first)
    assert_same_rows(list(first.values()), full)


@needs_posix_names
@pytest.mark.parametrize("fmt", RESUMABLE_FORMATS)
def test_cli_refuses_to_resume_a_foreign_file_and_leaves_it_unchanged(exotic_folder, tmp_path, fmt):
    out = tmp_path / f"notes.{fmt}"
    out.write_bytes(FOREIGN[fmt]["one line, no newline"])
    before = digest(out)
    result = run_cli(exotic_folder, "--weights", tmp_path / "absent.pth", "-o", out, "--resume")
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.count("\n") == 1 and f"--resume {out}: not a qualiclip-score {fmt} output" in stderr
    assert digest(out) == before


@pytest.mark.parametrize("fmt", RESUMABLE_FORMATS)
def test_rows_with_extra_columns_resume_only_with_the_same_columns(fmt, tmp_path):
    # Shard and Parquet inputs write their key/--id-col values after the base columns through the same writer and
    # resume scan as image files: a killed run's cut-off row goes, a file of other columns is refused untouched.
    from qualiclip_infer.sources import SourceResult

    path = tmp_path / f"rows.{fmt}"
    rows = [SourceResult(0, "a.tar::1.jpg", 0.25, 8, 6, extra={"key": "1", "id": 7}),
            SourceResult(1, "a.tar::2.jpg", error="truncated member", extra={"key": "2"})]
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = RowWriter(stream, fmt, extra_columns=("key", "id"))
        writer.write(rows)
        writer.close()
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        assert text.splitlines() == ["path,score,width,height,error,key,id", "a.tar::1.jpg,0.25000000,8,6,,1,7",
                                     "a.tar::2.jpg,,,,truncated member,2,"]
    else:
        assert [json.loads(line) for line in text.splitlines()] == [
            {"path": "a.tar::1.jpg", "score": 0.25, "width": 8, "height": 6, "error": None, "key": "1", "id": 7},
            {"path": "a.tar::2.jpg", "score": None, "width": None, "height": None, "error": "truncated member",
             "key": "2", "id": None}]
    path.write_text(text + text.splitlines(keepends=True)[-1][:15], encoding="utf-8")  # killed mid-row
    assert prepare_resume(str(path), fmt, ("key", "id")).names == {"a.tar::1.jpg", "a.tar::2.jpg"}
    assert path.read_text(encoding="utf-8") == text
    for columns in ((), ("key",)):
        with pytest.raises(OutputFileError, match="left unchanged"):
            prepare_resume(str(path), fmt, columns)
    assert path.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "table"])
def test_calibrated_columns_are_written_with_their_decimals(fmt):
    """docs/report-and-calibration.md: mos with the score's decimals (8; 4 in the table), percentile with 2."""
    row = Result("a.jpg", 0.123456789, 8, 6)
    row.mos, row.percentile = 3.141592653, 47.123456
    stream = io.StringIO()
    writer = RowWriter(stream, fmt, extra_columns=("mos", "percentile"))
    writer.write([row])
    writer.close()
    text = stream.getvalue()
    if fmt == "csv":
        assert text.splitlines()[1] == "a.jpg,0.12345679,8,6,,3.14159265,47.12"
    elif fmt == "table":
        assert text.split()[-2:] == ["3.1416", "47.12"]
    else:
        record = json.loads(text)[0] if fmt == "json" else json.loads(text)
        assert (record["score"], record["mos"], record["percentile"]) == (0.12345679, 3.14159265, 47.12)
