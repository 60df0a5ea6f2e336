"""Every command block of README.md runs as written, from a fresh clone with `.venv` (nothing activated).

Blocks are fenced ``sh``/``bash``/``console``/``python``; one that cannot run on a developer machine
(it needs the internet, a container engine or a cluster) carries ``<!-- readme-test: skip (reason) -->``
on the line before its fence, and is reported as skipped with that reason. The others run against a real
predictor (the yolov7-tiny random-weights fixture, standing in for `make dev`) on free ports: the only
change made to a block is ``localhost:8080``/``localhost:8081`` → those ports. They run in a scratch
folder that links to the checkout's files, so their outputs (``out/``) stay out of the checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tools.predictor_server import PredictorServer, predictor_server

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
COMMAND_LANGUAGES = ("sh", "bash", "console", "python")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```\s*$", re.S | re.M)
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    line: int
    lang: str
    body: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"README.md:{self.line}:{self.lang}"


def command_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("lang") not in COMMAND_LANGUAGES:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        blocks.append(Block(text.count("\n", 0, match.start()) + 1, match.group("lang"), match.group("body"),
                            skip.group("reason") if skip else None))
    return blocks


BLOCKS = command_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_runnable_blocks_and_says_why_others_are_not() -> None:
    runnable = [b for b in BLOCKS if b.skip is None]
    assert len(runnable) >= 4, [b.name for b in BLOCKS]
    assert all(b.skip.strip() for b in BLOCKS if b.skip is not None)
    # the set-up stays two commands
    setup = next(b for b in BLOCKS if "make dev" in b.body)
    assert [line.split("#")[0].strip() for line in setup.body.splitlines()] == ["make dev", "make test"]
    # commands run from .venv, never from an activated environment the reader may not have
    for block in runnable:
        commands = [line[2:] for line in block.body.splitlines() if line.startswith("$ ")] \
            if block.lang == "console" else block.body.splitlines()
        for command in commands:
            assert not re.match(r"\s*(python3?|yolo-v7|helm|pytest)\b", command), f"{block.name}: {command}"


@pytest.fixture(scope="module")
def server(yolo_fixtures: Path) -> PredictorServer:
    with predictor_server(yolo_fixtures / "yolov7-tiny-random.pt", model_name="yolov7",
                          extra_args=["--demo", "true"]) as running:
        yield running


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder that looks like the checkout (links to its entries) for the blocks to write into."""
    venv = REPO_ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"{venv} is missing (make install creates it)")
    folder = tmp_path_factory.mktemp("readme")
    for entry in REPO_ROOT.iterdir():
        if entry.name not in (".git",):
            (folder / entry.name).symlink_to(entry)
    return folder


def _environment() -> dict[str, str]:
    """The caller's environment without an activated virtualenv (the README must not rely on one)."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


def _localise(text: str, server: PredictorServer) -> str:
    return (text.replace("localhost:8080", f"127.0.0.1:{server.http_port}")
                .replace("localhost:8081", f"127.0.0.1:{server.grpc_port}"))


def _run(args: list[str], cwd: Path, name: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=_environment(), capture_output=True, text=True,
                            timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, f"{name} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_readme_block_runs(block: Block, server: PredictorServer, scratch: Path) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    body = _localise(block.body, server)
    if block.lang == "python":
        script = scratch / f"readme_{block.line}.py"
        script.write_text(body, encoding="utf-8")
        result = _run([str(scratch / ".venv" / "bin" / "python"), script.name], scratch, block.name)
        assert result.stdout.strip(), f"{block.name} printed nothing"
        return
    if block.lang == "console":
        commands = [line[2:] for line in body.splitlines() if line.startswith("$ ")]
        for command in commands:
            _run(["bash", "-euo", "pipefail", "-c", command], scratch, f"{block.name}: {command}")
        return
    result = _run(["bash", "-euo", "pipefail", "-c", body], scratch, block.name)
    # curl exits 0 on HTTP errors: every JSON answer printed must be a real answer, not an error
    chunks = re.findall(r"\{.*?\}(?=\{|\s*$)", result.stdout, re.S)
    assert chunks or "curl" not in body, f"{block.name}: no JSON answer"
    for chunk in chunks:
        answer = json.loads(chunk)
        assert "error" not in answer and ("outputs" in answer or "predictions" in answer), chunk[:300]
