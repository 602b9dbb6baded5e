"""Shell blocks of README.md and docs/*.md, and the marker that says how the docs test runs each.

A block is a fenced ```bash (or sh/shell/console) block, or a ```python block (run with the venv's
Python, as a reader who pastes it would). By default it is run as written, from the root of a
fresh copy of the checkout, with `bash -eo pipefail`, and must exit 0. An HTML comment on
the line just above the fence changes that (it does not show on GitHub):

    <!-- docs-test: skip (starts a server; tests/serve covers it) -->   not run; the reason is required
    <!-- docs-test: slow -->                                            run only with `make test-all`
    <!-- docs-test: exit=1 -->                                          the block must exit 1
    <!-- docs-test: timeout=900 -->                                     seconds (default 300)
    <!-- docs-test: activate -->                                        the text told the reader to run
                                                                        `source .venv/bin/activate` first

Items combine with ";" (`<!-- docs-test: slow; timeout=1200 -->`). A block that is run may not use a
bare `edgecxr`, `python` or `pip` unless marked `activate`: that is exit 127 (or the system Python,
without onnxruntime) for a reader who copies it into a fresh shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LANGS = ("bash", "sh", "shell", "console", "python")
_FENCE = re.compile(r"^```(\w+)?\s*$")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
_BARE = re.compile(r"(^|[;&|(]\s*|\b(?:then|do|until|while|if|time|nohup)\s+)(edgecxr|python3?|pip3?)\s")


def doc_files(repo: Path = REPO) -> list[Path]:
    """README.md, docs/*.md (and docs/models/*.md), build_engines/README.md, examples' READMEs."""
    files = [repo / "README.md", *sorted((repo / "docs").rglob("*.md")), *sorted(repo.glob("*/README.md"))]
    return [f for f in dict.fromkeys(files) if f.is_file()]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    options: dict[str, str] = field(default_factory=dict)
    lang: str = "bash"

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        return self.options.get("skip")

    @property
    def slow(self) -> bool:
        return "slow" in self.options

    @property
    def exit_code(self) -> int:
        return int(self.options.get("exit", 0))

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout", 300))

    def bare_commands(self) -> list[str]:
        """Lines that run a bare edgecxr/python/pip (allowed only in blocks marked `activate`)."""
        if "activate" in self.options or self.lang == "python":
            return []
        out = []
        for raw in self.code.splitlines():
            line = raw.split("#", 1)[0] if not raw.lstrip().startswith("#") else ""
            if _BARE.search(line):
                out.append(raw.strip())
        return out


def parse_options(text: str) -> dict[str, str]:
    """"skip (why); timeout=900" -> {"skip": "why", "timeout": "900"}."""
    options: dict[str, str] = {}
    text = text.strip()
    if text.startswith("skip") and "(" in text:  # the reason may hold ";": up to the matching ")"
        start, depth = text.index("("), 0
        for end in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        options["skip"] = text[start + 1 : end].strip()
        text = text[end + 1 :]
    for item in filter(None, (part.strip() for part in text.split(";"))):
        if item.startswith("skip"):
            reason = item[4:].strip().strip("():").strip()
            options["skip"] = reason
        elif "=" in item:
            key, value = (s.strip() for s in item.split("=", 1))
            options[key] = value
        else:
            options[item] = ""
    return options


def blocks(path: Path) -> list[Block]:
    """Every shell block of one Markdown file, with the options of the marker above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, (fence.group(1) or "").lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if lang in LANGS:
            above = lines[start - 1] if start > 0 else ""
            marker = _MARKER.match(above)
            options = parse_options(marker.group(1)) if marker else {}
            found.append(Block(path, start + 1, "\n".join(lines[start + 1 : j]) + "\n", options, lang))
        i = j + 1
    return found


def all_blocks(repo: Path = REPO) -> list[Block]:
    return [b for f in doc_files(repo) for b in blocks(f)]
