"""deploy/Dockerfile, read as text (no Docker engine here): the image installs the
worker's wheel, holds no sources, benchmarks or tests, and runs as a non-root user.

tests/e2e/test_wheel_install.py builds the wheel from the same files the builder
stage copies (BUILD_CONTEXT) and proves it migrates and handles a checkout.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"

#: What the builder stage copies from the repository: all a wheel needs.
BUILD_CONTEXT = {"pyproject.toml", "README.md", "schemas", "service"}


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> list[Stage]:
    """Instructions grouped by stage; comments dropped, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


def copy_sources(arguments: str) -> tuple[list[str], str | None]:
    """The sources of a COPY/ADD and its --from stage, if any."""
    words = shlex.split(arguments)
    from_stage = None
    plain = []
    for word in words:
        if word.startswith("--from="):
            from_stage = word.removeprefix("--from=")
        elif not word.startswith("--"):
            plain.append(word)
    return plain[:-1], from_stage


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of each `pip install` in the stage's RUN instructions."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = shlex.split(command)
            for i, word in enumerate(words):
                is_pip = word in ("pip", "pip3") or word.endswith(("/pip", "/pip3"))
                if i + 1 < len(words) and words[i + 1] == "install" and (
                    is_pip or (word == "pip" and i >= 2 and words[i - 1] == "-m")
                ):
                    found.append(words[i + 2 :])
    return found


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_it_is_a_multi_stage_build_whose_builder_makes_the_wheel(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder = stages[0]
    assert builder.name, "the builder stage is named, for COPY --from"
    wheels = [run for run in builder.all("RUN") if re.search(r"\bpip\b.*\bwheel\b", run)]
    assert wheels, "the builder stage runs `pip wheel`"
    assert any("--no-deps" in run for run in wheels), "the wheel alone, not its dependencies"


def test_the_builder_copies_only_what_the_wheel_is_built_from(stages: list[Stage]) -> None:
    copied: set[str] = set()
    for keyword in ("COPY", "ADD"):
        for arguments in stages[0].all(keyword):
            sources, from_stage = copy_sources(arguments)
            assert from_stage is None
            copied.update(s.rstrip("/").removeprefix("./") for s in sources)
    assert copied == BUILD_CONTEXT


def test_the_image_installs_the_wheel_never_an_editable_checkout(
    stages: list[Stage], final: Stage
) -> None:
    for stage in stages:
        for arguments in pip_installs(stage):
            assert "-e" not in arguments and "--editable" not in arguments, arguments
            assert "." not in arguments, f"an install of the sources: {arguments}"
    installs = pip_installs(final)
    assert any(any(a.endswith(".whl") for a in args) for args in installs), installs


def test_the_final_stage_holds_no_sources_benchmarks_or_tests(
    stages: list[Stage], final: Stage
) -> None:
    names = {s.name for s in stages if s.name}
    for keyword in ("COPY", "ADD"):
        for arguments in final.all(keyword):
            sources, from_stage = copy_sources(arguments)
            assert from_stage in names, f"{keyword} {arguments}: from the build context"
            for source in sources:
                parts = set(Path(source).parts)
                assert not parts & {"bench", "tests", "service", "schemas", "src"}, source
                assert source.endswith((".whl", "/dist", "/dist/")), source


def test_it_runs_as_a_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit() and int(user) == 10001, "numeric, for runAsNonRoot"


def test_the_entrypoint_is_stock_and_the_default_command_is_run(final: Stage) -> None:
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["stock"]
    assert json.loads(final.all("CMD")[-1]) == ["run"]


def test_the_healthcheck_probes_healthz(final: Stage) -> None:
    healthchecks = final.all("HEALTHCHECK")
    assert healthchecks and "/healthz" in healthchecks[-1]
