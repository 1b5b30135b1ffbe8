"""``qualiclip_infer._cli``: what the three commands share — exit statuses, one-line errors, the run wrapper, number
parsers and the writability check — in-process, and the same rules through each command as a subprocess."""

from __future__ import annotations

import argparse
import errno
import subprocess
import sys

import pytest

from qualiclip_infer import _cli
from qualiclip_infer.files import UnlistableFolderWarning, _report_unlistable

COMMANDS = {"qualiclip-score": "qualiclip_infer", "qualiclip-eval": "qualiclip_infer.eval",
            "qualiclip-train": "qualiclip_infer.train", "qualiclip-report": "qualiclip_infer.report"}


@pytest.mark.parametrize("parse, text, value", [
    (_cli.positive_int, "3", 3), (_cli.non_negative_int, "0", 0), (_cli.positive_float, "0.5", 0.5),
    (_cli.finite_float, "-2.5", -2.5), (_cli.number(int, 2), "2", 2),
    (_cli.number(float, 0, inclusive=False), "1e-9", 1e-9)])
def test_numbers_accepted(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text", [
    (_cli.positive_int, "0"), (_cli.positive_int, "1.5"), (_cli.positive_int, "x"), (_cli.non_negative_int, "-1"),
    (_cli.positive_float, "0"), (_cli.positive_float, "nan"), (_cli.positive_float, "inf"),
    (_cli.finite_float, "nan"), (_cli.finite_float, "-inf"), (_cli.number(int, 2), "1")])
def test_numbers_refused_with_the_text(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace("[", r"\[")):
        parse(text)


def _run(body, **options):
    return _cli.run("prog", body, **options)


def test_run_maps_failures_to_one_line_and_a_status(capsys):
    def raising(error):
        def body():
            raise error
        return body

    cases = [
        (_cli.UsageError("bad thing\nsecond line"), _cli.EXIT_USAGE, "prog: error: bad thing\n"),
        (KeyboardInterrupt(), _cli.EXIT_INTERRUPTED, "prog: interrupted; what was written so far is kept\n"),
        (OSError(errno.ENOSPC, "No space left on device", "out.csv"), _cli.EXIT_SYSTEM,
         "prog: error: out.csv: No space left on device\n"),
        (ValueError("not mine"), None, None),
    ]
    for error, status, line in cases:
        if status is None:
            with pytest.raises(ValueError):  # a bug is not dressed up as a usage error
                _run(raising(error))
            continue
        assert _run(raising(error)) == status
        assert capsys.readouterr().err == line
    assert _run(raising(ValueError("mine")), usage_errors=(ValueError,)) == _cli.EXIT_USAGE
    assert capsys.readouterr().err == "prog: error: mine\n"
    assert _run(lambda: 7) == 7
    assert len({_cli.EXIT_OK, _cli.EXIT_FAILURES, _cli.EXIT_USAGE, _cli.EXIT_SYSTEM, _cli.EXIT_INTERRUPTED}) == 5


def test_library_warnings_become_one_line_of_the_command(capsys):
    def body():
        _report_unlistable(PermissionError(errno.EACCES, "Permission denied", "photos/private"))
        return 0

    assert _run(body) == 0
    assert capsys.readouterr().err == "prog: warning: photos/private: cannot list folder: Permission denied\n"
    with pytest.warns(UnlistableFolderWarning, match="photos/private"):  # outside a command: a plain warning
        _report_unlistable(PermissionError(errno.EACCES, "Permission denied", "photos/private"))


def test_check_writable(tmp_path):
    target = tmp_path / "new" / "deeper" / "scores.csv"
    _cli.check_writable(str(target), "-o")
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []  # no file left behind, target untouched
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(_cli.UsageError, match=r"^-o .*file/scores.csv: cannot write there: "):
        _cli.check_writable(str(blocker / "scores.csv"), "-o")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_reports_a_bad_number_on_one_line(command, tmp_path):
    argv = {"qualiclip-score": ["x.jpg", "--batch-size", "0"],
            "qualiclip-eval": ["mos.csv", "-o", "r.json", "--batch-size", "0"],
            "qualiclip-train": ["fit", "--images", str(tmp_path), "--out", "m.pth", "--batch-size", "0"],
            "qualiclip-report": ["scores.csv", "--workers", "0"]}[command]
    result = subprocess.run([sys.executable, "-m", COMMANDS[command], *argv], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == _cli.EXIT_USAGE
    assert result.stderr.count("\n") == 1, result.stderr
    assert argv[-2] in result.stderr and "expected an integer >= 1, got '0'" in result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_documents_the_shared_exit_statuses(command):
    result = subprocess.run([sys.executable, "-m", COMMANDS[command], "--help"], capture_output=True, text=True,
                            timeout=120)
    text = " ".join(result.stdout.split())
    if command == "qualiclip-train":  # the statuses are on the fit subcommand
        result = subprocess.run([sys.executable, "-m", COMMANDS[command], "fit", "--help"], capture_output=True,
                                text=True, timeout=120)
        text = " ".join(result.stdout.split())
    for meaning in _cli.EXIT_STATUS_HELP.values():
        assert " ".join(meaning.split()) in text, (command, meaning)


@pytest.mark.parametrize("module", ["qualiclip_infer.cli", "qualiclip_infer.eval.cli", "qualiclip_infer.train.cli",
                                    "qualiclip_infer.report.cli"])
def test_every_command_parses_its_arguments_without_torch(module):
    """``--help`` and usage errors stay instant: no command imports torch, open_clip or huggingface_hub before it
    has parsed its arguments (qualiclip-train --help took 3-4.7 s when it did)."""
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in ('torch', 'open_clip', 'huggingface_hub') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
