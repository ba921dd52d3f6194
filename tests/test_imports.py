"""pixdesk never imports the test oracles (transformers, mistral_common, cv2) outside tests, and the core
packages import with only torch, safetensors, numpy, pillow and tiktoken."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pixdesk"
FORBIDDEN = {"transformers", "mistral_common", "cv2"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_oracle_imports_in_the_package():
    offenders = {str(p): _imports(p) & FORBIDDEN for p in PKG.rglob("*.py") if _imports(p) & FORBIDDEN}
    assert not offenders


# Everything pixdesk or the test extras install besides the core five: none may be needed by the core.
NOT_CORE = ("starlette", "uvicorn", "mss", "pyperclip", "platformdirs", "transformers", "mistral_common",
            "cv2",
            "pydantic", "httpx", "anyio", "huggingface_hub", "tokenizers", "llguidance", "xgrammar", "openai",
            "mcp", "tomli", "sentencepiece", "pytest")  # fmt: skip


def test_core_packages_import_without_optional_dependencies():
    """Block every installed non-core package in a fresh interpreter, then import the core packages."""
    code = f"""
import sys, importlib.abc
BLOCKED = {NOT_CORE!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import pixdesk.model.pixtral, pixdesk.weights.load, pixdesk.weights.checkpoint, pixdesk.weights.tiny
import pixdesk.tokenizer.tekken, pixdesk.tokenizer.chat, pixdesk.tokenizer.image
import pixdesk.engine.generate, pixdesk.engine.backend, pixdesk.engine.scheduler
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
