"""Every shell block in README.md and docs/*.md runs as written (or says, in a marker, why not).

The blocks run in a fresh copy of the checkout (what `git` would commit: tracked files and new ones
that are not ignored) with `../shared` beside it, in document order, each from the copy's root, with
HOME pointing at a scratch folder (the models folder, caches and default run folders land there,
not in the reader's home). After each block `git status --porcelain` of the copy must be empty: a
documented command may not overwrite committed files or leave output that is not git-ignored.
Marker syntax and the bare-command rule: tests/docs/doc_blocks.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs.doc_blocks import REPO, Block, all_blocks

BLOCKS = all_blocks()
VENV = REPO / ".venv"


def _params(block: Block):
    marks = [pytest.mark.slow] if block.slow else []
    if block.skip_reason is not None:
        marks.append(pytest.mark.skip(reason=f"docs-test marker: {block.skip_reason}"))
    return pytest.param(block, id=block.id, marks=marks)


def _git(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "docs-test", "GIT_AUTHOR_EMAIL": "docs@test",
           "GIT_COMMITTER_NAME": "docs-test", "GIT_COMMITTER_EMAIL": "docs@test"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_every_block_runs_or_says_why_and_uses_no_bare_command():
    problems = []
    for block in BLOCKS:
        if block.skip_reason == "":
            problems.append(f"{block.id}: `skip` needs a reason")
        if block.skip_reason is None:
            problems += [f"{block.id}: bare command (use .venv/bin/ or mark the block `activate`): {line}"
                         for line in block.bare_commands()]
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    shared = Path(os.environ.get("EDGECXR_SHARED") or REPO.parent / "shared")
    if not (shared / "data" / "cxr" / "manifest.csv").is_file():
        pytest.skip(f"../shared not found at {shared}")
    stamp = VENV / ".edgecxr-installed"
    if not stamp.is_file() or stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
        pytest.skip("run `make setup` first (the docs' `make setup` must find the venv up to date)")
    root = tmp_path_factory.mktemp("docs-checkout")
    copy = root / "main"
    names = _git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / name)
    (copy / ".venv").symlink_to(VENV, target_is_directory=True)
    (root / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    (root / "home").mkdir()
    _git(["init", "-q"], copy)
    _git(["add", "-A"], copy)
    _git(["commit", "-q", "-m", "the checkout as the docs test found it"], copy)
    return copy


def _env(copy: Path, block: Block) -> dict[str, str]:
    venv_bin = str(VENV / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(venv_bin).resolve()]
    if "activate" in block.options:
        path.insert(0, str(copy / ".venv" / "bin"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGECXR_", "PYTEST_", "VIRTUAL_ENV"))}
    env.update(PATH=os.pathsep.join(path), HOME=str(copy.parent / "home"), PYTHONPATH=str(copy),
               XDG_DATA_HOME=str(copy.parent / "home" / ".local" / "share"), TERM="dumb")
    env.pop("XDG_CACHE_HOME", None)
    return env


@pytest.mark.parametrize("block", [_params(b) for b in BLOCKS])
def test_doc_block_runs_as_written_and_leaves_the_checkout_clean(block: Block, checkout_copy: Path):
    try:
        argv = [str(checkout_copy / ".venv" / "bin" / "python"), "-c"] if block.lang == "python" else \
            ["bash", "-eo", "pipefail", "-c"]
        done = subprocess.run([*argv, block.code], cwd=checkout_copy,
                              env=_env(checkout_copy, block), capture_output=True, text=True,
                              timeout=block.timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id}: still running after {block.timeout:g} s (mark it, or make it finish)\n{exc.stdout}")
    tail = (done.stdout[-3000:] + "\n--- stderr ---\n" + done.stderr[-3000:]).strip()
    assert done.returncode == block.exit_code, f"{block.id}: exit {done.returncode}, expected {block.exit_code}\n{tail}"
    dirty = _git(["status", "--porcelain", "--untracked-files=all"], checkout_copy).splitlines()
    assert not dirty, f"{block.id} left the checkout dirty:\n" + "\n".join(dirty[:30])
