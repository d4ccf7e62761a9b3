"""The examples are valid job graphs, and the batch generator builds the 5,000-document
batch the README runs (within the service's default limits)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from app.config import Settings
from app.engine.graph import validate_graph
from app.engine.spec import JobSpec
from tests.cli.conftest import EXAMPLES


def load_make_batch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_batch", EXAMPLES / "make_batch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_example_files_are_valid_graphs(path: Path) -> None:
    spec = JobSpec.model_validate_json(path.read_text())
    validate_graph(spec, max_agents=Settings().max_agents_per_job)


def test_the_5000_document_batch() -> None:
    make_batch = load_make_batch().make_batch
    graph = make_batch(5000)
    body = json.dumps(graph).encode()
    settings = Settings()
    assert len(body) < settings.max_request_bytes
    spec = JobSpec.model_validate(graph)
    validate_graph(spec, max_agents=settings.max_agents_per_job)

    ids = [a["id"] for a in graph["agents"]]
    assert len(ids) == 5000 + 50 + 1
    assert ids[0] == "doc_0001" and ids[4999] == "doc_5000"
    assert len(graph["context"]["documents"]) == 5000
    sections = [a for a in graph["agents"] if a["id"].startswith("section_")]
    assert [len(s["depends_on"]) for s in sections] == [100] * 50
    assert graph["agents"][-1]["id"] == "report"
    assert graph["agents"][-1]["depends_on"] == [s["id"] for s in sections]
    assert graph["failure_policy"] == "continue"
    # Deterministic for a seed, different across seeds.
    assert make_batch(5000) == graph
    assert make_batch(5, seed=1)["context"] != make_batch(5, seed=2)["context"]


def test_a_small_batch_is_flat_and_the_command_line_works(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    subprocess.run(
        [
            *(sys.executable, str(EXAMPLES / "make_batch.py"), "12"),
            "--model",
            "deepseek-v3.2",
            "-o",
            str(out),
        ],
        check=True,
    )
    graph = json.loads(out.read_text())
    assert graph["model"] == "deepseek-v3.2"
    assert [a["id"] for a in graph["agents"]][-1] == "report"
    assert len(graph["agents"][-1]["depends_on"]) == 12
    assert len(graph["agents"]) == 13
    refused = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_batch.py"), "0"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "N must be at least 1" in refused.stderr
