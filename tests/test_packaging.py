"""constraints.txt pins every dependency pyproject.toml declares, at a version its specifier accepts.

`make` installs with `-c constraints.txt`, so a dependency missing from it would float on a fresh machine;
`make lock` regenerates the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [line for extra in project["optional-dependencies"].values() for line in extra]
    return [Requirement(line) for line in lines]


def pins(text: str) -> dict[str, Version]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = Version(version)
    return out


def check_constraints(requirements: list[Requirement], pinned: dict[str, Version]) -> list[str]:
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            problems.append(f"{requirement} is not pinned in constraints.txt (run `make lock`)")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"constraints.txt pins {name}=={pinned[name]}, outside {requirement} (run `make lock`)")
    if canonicalize_name("dbgenie-services") in pinned:
        problems.append("constraints.txt pins the project itself")
    return problems


def test_every_declared_dependency_is_pinned_within_its_bounds() -> None:
    problems = check_constraints(declared(), pins((ROOT / "constraints.txt").read_text()))
    assert not problems, "\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("requirement", "problem"),
    [("left-pad-nowhere>=1", "is not pinned"), ("nats-py>=99", "outside nats-py>=99")],
)
def test_constraints_check_catches(requirement: str, problem: str) -> None:
    problems = check_constraints([*declared(), Requirement(requirement)], pins((ROOT / "constraints.txt").read_text()))
    assert len(problems) == 1 and problem in problems[0]
