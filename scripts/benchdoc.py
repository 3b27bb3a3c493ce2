"""Shared by the benchmark scripts: write one named section of docs/benchmarks.md, keeping the others.

Each script owns the text between `<!-- begin NAME -->` and `<!-- end NAME -->`; the header records the
command, the machine and the date so that a reader knows what the figures are.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
TITLE = "# Benchmarks\n\nEach section is written by the script named in it; rerun that command to refresh it.\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def header(command: str) -> str:
    today = datetime.date.today().isoformat()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=DOC.parent, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"Command: `{command}` · date {today} · commit {commit or '?'} · machine: {machine()}\n\n"


def write_section(name: str, markdown: str, command: str | None = None) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md with `markdown` plus a header line."""
    command = command or "python " + " ".join([os.path.relpath(sys.argv[0], DOC.parent.parent)] + sys.argv[1:])
    block = f"<!-- begin {name} -->\n{header(command)}{markdown.rstrip()}\n<!-- end {name} -->"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else TITLE
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = DOC.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, DOC)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"
