"""The library must run without the WebUI: nothing under lib_safe_denoiser/ may import its
``modules`` package or gradio (they are only there inside a WebUI, and the glue owns them)."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib_safe_denoiser"
FORBIDDEN = ("modules", "gradio")


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_library_never_imports_the_webui_or_gradio():
    offenders = {}
    files = sorted(LIB.rglob("*.py"))
    assert len(files) > 20, "the library was not found where this test looks"
    for path in files:
        bad = _imported_roots(ast.parse(path.read_text(encoding="utf-8"))) & set(FORBIDDEN)
        if bad:
            offenders[str(path.relative_to(LIB))] = sorted(bad)
    assert offenders == {}


def test_the_check_sees_every_import_form(tmp_path):
    src = "import modules.shared\nfrom gradio import Blocks\nimport importlib\nimportlib.import_module('modules.x')\n"
    assert _imported_roots(ast.parse(src)) >= {"modules", "gradio"}
    assert _imported_roots(ast.parse("__import__('gradio')")) == {"gradio"}
