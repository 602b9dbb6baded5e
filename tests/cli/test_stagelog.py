"""A long command's log: one line per stage, details (two-space indented lines) behind -v."""

from __future__ import annotations

import io

from edgecxr.cli.stagelog import StageLog


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(log: StageLog) -> None:
    log("calibrating model.int8.onnx on 127 calib images")
    for k in range(1, 81):
        log(f"  sensitivity: {k}/80 nodes, {k} s")
    for _ in range(12):
        log("  bisect: 40 node(s) in float, agreement 98.45%, fails the gate")
    log("chose 3 node(s) in float")


def test_off_a_terminal_details_become_a_few_lines_and_stages_all_print():
    out = io.StringIO()
    _run(StageLog(stream=out))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("calibrating") and lines[-1] == "chose 3 node(s) in float"
    counted = [line for line in lines if "sensitivity" in line]
    assert len(counted) == 4 and counted[-1].startswith("  sensitivity: 80/80")  # every quarter, not 80 lines
    assert "ETA" in counted[0]
    assert not any("bisect" in line for line in lines)  # uncounted details only with -v
    assert "\r" not in out.getvalue()


def test_verbose_prints_every_line():
    out = io.StringIO()
    _run(StageLog(verbose=True, stream=out))
    assert len(out.getvalue().splitlines()) == 2 + 80 + 12


def test_on_a_terminal_one_status_line_is_redrawn_and_cleared_before_the_next_stage():
    out = _Tty()
    _run(StageLog(stream=out))
    text = out.getvalue()
    assert text.count("\n") == 2  # the two stage lines; the 92 details share one redrawn line
    before_last = text.rsplit("chose 3", 1)[0]
    assert before_last.endswith("\r")  # the status line was blanked before the stage line
