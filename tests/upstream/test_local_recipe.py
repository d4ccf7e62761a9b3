"""The README's recipe for a local model is a models file the service accepts: each model
routed to its server, with the window and the zero prices it gives."""

from __future__ import annotations

import re
from pathlib import Path

from app.upstream.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path) -> Path:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```yaml\n(# models\.local\.yaml\n.*?)```", readme, re.DOTALL)
    assert match, "the README's local-model recipe is missing"
    path = tmp_path / "models.local.yaml"
    path.write_text(match.group(1))
    return path


def test_the_readme_recipe_loads_with_its_windows_and_providers(tmp_path: Path) -> None:
    registry = ModelRegistry.load(str(recipe(tmp_path)))
    local, qwen = registry.get("local"), registry.get("qwen3-8b")
    assert (local.provider, local.context_window) == ("llama", 4096)
    assert (qwen.provider, qwen.context_window) == ("vllm", 32768)
    assert local.cost(1000, 1000) == 0 and qwen.cost(10, 10) == 0
