"""The service install: reproducible (requirements.lock pins, at exact versions, every
runtime dependency pyproject.toml names, and theirs, at a version pyproject allows, and
nothing else: no test tools), and capped (the systemd unit limits memory and tasks and keeps
its hardening)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parent.parent
LOCK = ROOT / "requirements.lock"
UNIT = ROOT / "systemd" / "syncd.service"
# pip freeze leaves the installers out; they are never a runtime dependency of syncd
INSTALLERS = {"pip", "setuptools", "wheel", "distribute"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "runtime": [Requirement(r) for r in project["dependencies"]],
        **{k: [Requirement(r) for r in v] for k, v in project["optional-dependencies"].items()},
    }


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", line)
        assert m, f"requirements.lock line {number}: {line!r} is not an exact pin NAME==VERSION"
        name = canonical(m.group(1))
        assert name not in pins, f"requirements.lock line {number}: {name} is pinned twice"
        pins[name] = Version(m.group(2))
    return pins


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in on this Python (markers evaluated), from
    the metadata of the installed distributions."""
    seen: dict[str, set[str]] = {}
    todo = [(r, "") for r in roots]
    while todo:
        req, via = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in (via.split(",") if via else [""])
        ):
            continue
        name = canonical(req.name)
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            raise AssertionError(
                f"{req.name} is not installed here: cannot check what it depends on"
            ) from None
        wanted = ",".join(["", *sorted(seen[name])])
        todo.extend((Requirement(r), wanted) for r in requires)
    return set(seen)


def test_every_runtime_dependency_is_pinned_at_a_version_pyproject_allows():
    pins = locked()
    for req in pyproject()["runtime"]:
        name = canonical(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, which pyproject.toml's "
            f"{req} does not allow"
        )


def test_the_lock_holds_the_runtime_dependencies_and_theirs_and_nothing_else():
    pins = set(locked())
    needed = closure(pyproject()["runtime"]) - INSTALLERS
    assert not needed - pins, f"not pinned in requirements.lock: {sorted(needed - pins)}"
    assert not pins - needed, (
        f"pinned in requirements.lock but no runtime dependency of syncd: {sorted(pins - needed)}"
    )
    test_tools = {canonical(r.name) for r in pyproject()["test"]}
    assert not test_tools & pins, f"test tools in the service lock: {test_tools & pins}"


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_the_unit_caps_memory_and_tasks_and_keeps_its_hardening():
    unit = unit_settings()
    size = {"K": 2**10, "M": 2**20, "G": 2**30}
    high, cap = (int(unit[k][:-1]) * size[unit[k][-1]] for k in ("MemoryHigh", "MemoryMax"))
    assert 512 * 2**20 <= high < cap  # throttled before it is killed, never absurdly low
    assert 16 <= int(unit["TasksMax"]) <= 4096
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "User": "syncd",
        "StateDirectoryMode": "0700",
    }
    assert {k: unit.get(k) for k in hardening} == hardening
    text = UNIT.read_text()
    assert "Sizing:" in text and "requirements.lock" in text  # how to size, how to install
