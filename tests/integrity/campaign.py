"""The integrity campaign, replayed: hostile inputs, models and outputs as generated fixtures.

A bad-input campaign (issue 11) made 465 tries against the CLI and the Python API and counted
four outcomes. This module judges every case the same way, so the regression suite can print the
same summary:

  clean       the run ended as the case expects;
  traceback   an exception other than SystemExit escaped (the CLI turns every anticipated error
              into one `error:` line, and the API raises EdgeCXRError or reports per file, so any
              other exception is a bug);
  wrong exit  the exit code (or, for an API case, the outcome) differs from what the case expects,
              e.g. a corrupt image classified with exit 0;
  data lost   a file that existed before the run (inputs, the bundle, a file an output option
              pointed at) changed content, mode or kind, or vanished, and the case did not allow it.

CLI cases run in process through Click's CliRunner, so a traceback is caught rather than printed
and ~400 cases take about a minute on two cores. Every case builds its files in its own folder;
nothing large is committed (a "4 GB" file is sparse).
"""

from __future__ import annotations

import hashlib
import os
import stat
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner

OUTCOMES = ("clean", "traceback", "wrong exit", "data lost")

#: every judged case, for the one-line summary at the end of the session (conftest prints it)
RESULTS: list[tuple[str, str, str, str]] = []  # (family, case id, outcome, detail)

#: files above this size are compared by size and mtime, not hashed (the sparse "4 GB" file)
_HASH_LIMIT = 64 << 20


@dataclass
class Plan:
    """What one case runs and what it expects.

    Exactly one of `args` (an `edgecxr` command line) or `call` (a Python API call) is set.
    `call` returns None when the outcome is right, else a sentence saying what was wrong; an
    exception it raises is judged by `raises`.
    """

    args: list[str] | None = None
    call: Callable[[], str | None] | None = None
    exit_code: int = 0
    #: extra checks on a CLI result (stdout, stderr, files): None, or what was wrong
    check: Callable[[Any], str | None] | None = None
    #: files the run may create or replace (its outputs); everything else must stay as it was
    writes: tuple[Path, ...] = ()
    #: for `call`: the exception class expected to be raised (an EdgeCXRError subclass), or None
    raises: type[BaseException] | None = None
    #: text that must appear in the one-line error (stderr for CLI, the message for API)
    error_has: str | None = None
    cwd: Path | None = None
    #: the command reports per-file failures in its output (exit 1) rather than one `error:` line
    per_file: bool = False


@dataclass
class Case:
    """A named, generated campaign case: `build(folder)` writes its files and returns its Plan."""

    family: str
    id: str
    build: Callable[[Path], Plan]
    tags: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.family}/{self.id}"


def snapshot(root: Path) -> dict[Path, tuple]:
    """Kind, mode and content digest of everything under `root` (symlinks not followed)."""
    out: dict[Path, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[p] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[p] = ("dir", stat.S_IMODE(st.st_mode))
            elif not stat.S_ISREG(st.st_mode):
                out[p] = ("special", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))  # a FIFO is never read
            elif st.st_size > _HASH_LIMIT:
                out[p] = ("big", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
            else:
                out[p] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def lost(before: dict[Path, tuple], after: dict[Path, tuple], writes: tuple[Path, ...]) -> list[str]:
    """Files of `before` that changed or vanished, other than the allowed outputs."""
    allowed = {Path(os.path.abspath(w)) for w in writes}
    problems = []
    for path, was in before.items():
        if Path(os.path.abspath(path)) in allowed:
            now = after.get(path)
            # an allowed output may change content, never become a link or lose its mode
            if now is not None and was[0] == "file" and (now[0] != "file" or now[1] != was[1]):
                problems.append(f"{path.name}: {was[:2]} -> {now[:2]}")
            continue
        now = after.get(path)
        if now is None:
            problems.append(f"{path.name}: removed")
        elif now != was:
            problems.append(f"{path.name}: changed")
    return problems


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """Build and run one case in `folder`; returns (outcome, detail) and records it in RESULTS."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = case.build(folder)
    before = snapshot(folder)
    outcome, detail = _run(plan)
    if outcome != "traceback":  # data lost outranks a wrong exit code: it is what cannot be undone
        problems = lost(before, snapshot(folder), plan.writes)
        if problems:
            outcome, detail = "data lost", "; ".join(problems[:3])
    RESULTS.append((case.family, case.id, outcome, detail))
    return outcome, detail


def _run(plan: Plan) -> tuple[str, str]:
    if plan.args is not None:
        return _run_cli(plan)
    assert plan.call is not None
    try:
        problem = plan.call()
    except BaseException as exc:  # noqa: BLE001 - judging what escaped is the point
        from edgecxr.core.errors import EdgeCXRError

        text = f"{type(exc).__name__}: {exc}"
        if plan.raises is not None and isinstance(exc, plan.raises):
            if "\n" in str(exc).strip():
                return "wrong exit", f"error is not one line: {text[:200]}"
            if plan.error_has and plan.error_has not in str(exc):
                return "wrong exit", f"error lacks {plan.error_has!r}: {text[:200]}"
            return "clean", ""
        if isinstance(exc, EdgeCXRError):
            return "wrong exit", f"unexpected {text[:200]}"
        return "traceback", "".join(traceback.format_exception_only(exc)).strip()[:300]
    if plan.raises is not None:
        return "wrong exit", f"expected {plan.raises.__name__}, nothing raised ({problem or 'no problem'})"
    return ("clean", "") if problem is None else ("wrong exit", problem)


def _run_cli(plan: Plan) -> tuple[str, str]:
    from edgecxr.cli import main

    runner = CliRunner()
    cwd = os.getcwd()
    try:
        if plan.cwd is not None:
            os.chdir(plan.cwd)
        result = runner.invoke(main, plan.args, catch_exceptions=True)
    finally:
        os.chdir(cwd)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        return "traceback", "".join(traceback.format_exception_only(exc)).strip()[:300]
    if "Traceback (most recent call last)" in result.output + result.stderr:
        return "traceback", result.stderr[-300:]
    if result.exit_code != plan.exit_code:
        return "wrong exit", f"exit {result.exit_code}, expected {plan.exit_code}: {result.stderr.strip()[-240:]}"
    if result.exit_code != 0 and not plan.per_file:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if len(errors) != 1:
            return "wrong exit", f"expected one 'error:' line, got {len(errors)}: {result.stderr.strip()[-240:]}"
    if plan.error_has and plan.error_has not in result.stderr:
        return "wrong exit", f"stderr lacks {plan.error_has!r}: {result.stderr.strip()[-240:]}"
    if plan.check is not None:
        problem = plan.check(result)
        if problem:
            return "wrong exit", problem
    return "clean", ""


def summary() -> str:
    """'integrity campaign: 412 tried, 412 clean, 0 traceback, 0 wrong exit, 0 data lost' (+ per family)."""
    if not RESULTS:
        return ""
    counts = Counter(outcome for _, _, outcome, _ in RESULTS)
    families = Counter(family for family, _, _, _ in RESULTS)
    head = f"integrity campaign: {len(RESULTS)} tried, " + ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES)
    per = ", ".join(f"{f} {n}" for f, n in sorted(families.items()))
    bad = [f"  {outcome}: {family}/{cid}: {detail}" for family, cid, outcome, detail in RESULTS if outcome != "clean"]
    return "\n".join([head, f"  families: {per}", *bad[:40]])
