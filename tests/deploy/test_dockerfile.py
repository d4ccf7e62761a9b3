"""The Dockerfile, without a Docker engine: hadolint and shellcheck when installed (the dev
extras bring both), and what the image must be: slim, non-root, dependencies from
pyproject.toml in a layer of their own, a health check, the data volume, a .dockerignore."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + raw.strip()
        elif raw.strip():
            lines.append(raw.strip())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings it)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_on_the_scripts() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[dev]' brings it)")
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh"))
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_shape() -> None:
    steps = instructions()
    kinds = [k for k, _ in steps]
    args = dict(reversed(steps))  # the first occurrence of each instruction

    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["FROM"])
    # Non-root, by number; the volume belongs to that user.
    user = [a for k, a in steps if k == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), user
    assert any("chown" in a and "/data" in a for k, a in steps if k == "RUN")
    assert args["VOLUME"] == '["/data"]'
    assert "sqlite:////data/swarm.db" in args["ENV"]
    assert "/healthz" in args["HEALTHCHECK"]
    assert args["ENTRYPOINT"] == '["/srv/scripts/entrypoint.sh"]'

    # Dependencies come before the code, from a layer that copies pyproject.toml alone.
    first_copy = next(a for k, a in steps if k == "COPY")
    assert first_copy.split() == ["pyproject.toml", "./"]
    copy_app = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and "app" in a.split())
    deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "requirements" in a)
    assert deps < copy_app
    assert kinds.index("USER") > copy_app


def test_the_dependency_layer_installs_exactly_pyprojects_dependencies(tmp_path: Path) -> None:
    run = next(a for k, a in instructions() if k == "RUN" and "tomllib" in a)
    extract = run.split("&&")[0].strip()
    command, _, target = extract.partition(">")
    assert target.strip() == "/tmp/requirements.txt"
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"]
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    with (ROOT / "pyproject.toml").open("rb") as f:
        expected = tomllib.load(f)["project"]["dependencies"]
    assert result.stdout.splitlines() == expected


def test_dockerignore_keeps_state_and_secrets_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".venv", "data", "*.db*", ".env", "tests", "**/__pycache__"):
        assert entry in ignored, entry
