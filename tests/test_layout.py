"""The README's map names real files and functions, and the runtime never imports the cost model or the bench."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _defined(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and `Class.method` for their methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef)}
    return names


def test_readme_map_names_exist():
    text = (REPO / "README.md").read_text()
    table = text[text.index("<!-- map:start -->"):text.index("<!-- map:end -->")]
    pairs = re.findall(r"`(paravideo/[\w/]+\.py)` `([\w.]+)`", table)
    assert len(pairs) >= 15
    for path, name in pairs:
        assert (REPO / path).is_file(), path
        assert name in _defined(REPO / path), f"{path} defines no {name}"


def test_runtime_never_imports_the_cost_model_or_the_bench():
    script = ("import sys\n"
              "import paravideo.generate, paravideo.runtime.worker, paravideo.runtime.roles\n"
              "import paravideo.launch.local, paravideo.launch.inline, paravideo.launch.torchrun\n"
              "bad = sorted(m for m in sys.modules if m.startswith(('paravideo.costmodel', 'paravideo.bench')))\n"
              "print(','.join(bad))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == ""


def test_worker_is_a_thin_lifecycle():
    source = (REPO / "paravideo/runtime/worker.py").read_text()
    assert len(source.splitlines()) < 200
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno < 50, f"{node.name} is {node.end_lineno - node.lineno} lines"
