"""The README's code blocks, read from README.md at run time (never a copy).

Used by tests/test_readme.py and by .ci/run:
    python tests/readme_blocks.py quickstart          the quick start's first bash block
    python tests/readme_blocks.py command PREFIX      the first README command starting with PREFIX
"""
from __future__ import annotations

import os
import re
import sys
from typing import List, Tuple

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str, path: str = README) -> List[Tuple[str, str]]:
    """(section heading, code) of every fenced block in language ``lang``, in README order."""
    text = open(path, encoding="utf-8").read()
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1) == lang:
            heads = re.findall(r"^#+ (.*)$", text[: m.start()], re.M)
            out.append((heads[-1] if heads else "", m.group(2)))
    return out


def quickstart(path: str = README) -> str:
    """The first bash block under "## Quick start": installs and runs the main job."""
    for head, code in blocks("bash", path):
        if head == "Quick start":
            return code.strip()
    raise LookupError("README.md has no bash block under '## Quick start'")


def commands(path: str = README) -> List[str]:
    """Every command line of the README's bash blocks, comments and blank lines left out."""
    out = []
    for _, code in blocks("bash", path):
        for line in code.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def command(prefix: str, path: str = README) -> str:
    for c in commands(path):
        if c.startswith(prefix):
            return c
    raise LookupError(f"README.md has no command starting with {prefix!r}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "quickstart":
        print(quickstart())
    elif what == "command" and len(sys.argv) == 3:
        print(command(sys.argv[2]))
    else:
        sys.exit("usage: python tests/readme_blocks.py quickstart | command PREFIX")
