#!/usr/bin/env python3
"""List the comments and docstrings that carry a timing (DEVELOPERS.md: no timings in code comments).

    python3 tools/timing_comments.py [DIR ...]      # default: src

Reads every ``.py`` file under each DIR and prints ``path:line: text`` for each ``#`` comment and each
docstring line (module, class, function and attribute docstrings) that names a duration (``20 ms``,
``4 µs``, ``0.5 s``, ``milliseconds``, ``3×``, ``faster`` ...). Units of a parameter (``timeout`` in
seconds) match too: read the list, it is a finder, not a judge. Exit status 0 always.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

TIMING = re.compile(
    r"\d[\d,.]*\s?(?:ms|µs|us|ns|s|sec|seconds?|min|minutes?)\b"
    r"|\d[\d.]*\s?×|×\s?\d|\bx faster\b|\btimes (?:faster|slower)\b|\bfaster\b|\bslower\b"
    r"|\b(?:milli|micro|nano)?seconds\b"
)


def _docstring_lines(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for i, stmt in enumerate(node.body):
            # the docstring, and attribute docstrings (a string statement after an assignment)
            if i > 0 and not isinstance(node, (ast.Module, ast.ClassDef)):
                break
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                    and isinstance(stmt.value.value, str):
                first = stmt.value.lineno
                out += [(first + k, line) for k, line in enumerate(stmt.value.value.splitlines())]
    return out


def scan(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of each comment or docstring line of ``path`` that names a duration."""
    source = path.read_text(encoding="utf-8")
    lines = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
             if t.type == tokenize.COMMENT]
    lines += _docstring_lines(ast.parse(source, str(path)))
    return sorted({(n, text.strip()) for n, text in lines if TIMING.search(text)})


def main(argv: list[str]) -> int:
    for root in [Path(a) for a in argv] or [Path("src")]:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            for n, text in scan(path):
                print(f"{path}:{n}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
