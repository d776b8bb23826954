"""Count the imports made inside function bodies (deferred imports) of medfuse.

    python benchmarks/deferred_imports.py [SRC_DIR] [--list] [--files F ...]

Prints ``total`` (every import statement inside a function) and ``medfuse`` (those of medfuse's
own modules); ``--list`` prints each as ``file:line: statement  # comment``, and ``--unexplained``
only those without a ``# lazy: reason`` comment (on their line, or a line above their
block of imports). Deferred imports are kept only
where they buy start-up time or an optional extra, each with its reason.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def deferred(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, is medfuse's own) of each import inside a function of ``path``."""
    out: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom) and inside:
                if isinstance(child, ast.ImportFrom):
                    mod, own = child.module or "", bool(child.level)
                else:
                    mod, own = child.names[0].name, False
                out.append((child.lineno, mod, own or mod.split(".")[0] == "medfuse"))
            fn = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inside or fn)

    visit(ast.parse(path.read_text()), False)
    return out


def _block_comment(lines: list[str], i: int) -> bool:
    """Whether the import on line index ``i`` opens or continues a block of imports under a
    ``# lazy:`` comment line."""
    j = i - 1
    while j >= 0 and lines[j].strip().startswith(("from ", "import ")):
        j -= 1
    return j >= 0 and lines[j].strip().startswith("# lazy:")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=str(Path(__file__).parents[1] / "src" / "medfuse"))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--unexplained", action="store_true", help="only those without '# lazy:'")
    ap.add_argument("--files", nargs="*", help="only these files")
    a = ap.parse_args()
    files = [Path(f) for f in a.files] if a.files else sorted(Path(a.src).rglob("*.py"))
    total = own = 0
    for f in files:
        lines = f.read_text().splitlines()
        for line, _mod, is_own in deferred(f):
            total += 1
            own += is_own
            text = lines[line - 1].strip()
            explained = "# lazy:" in text or _block_comment(lines, line - 1)
            if a.list or (a.unexplained and not explained):
                print(f"{f}:{line}: {text}")
    print(f"deferred imports: total {total}, of medfuse modules {own}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
