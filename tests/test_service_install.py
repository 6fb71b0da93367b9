"""The service install: reproducible (requirements.lock pins, at exact versions, every
runtime dependency pyproject.toml names, and theirs, at a version pyproject allows, and
nothing else: no test tools), capped (the systemd unit limits memory and tasks), and
sandboxed: ``systemd-analyze security`` rates the unit 2.0 or lower (OK) while it can still
write its state and the calendar folders a drop-in names, and reach mail servers and
PostgreSQL; ``systemd-analyze verify`` finds nothing to say. The install itself, for real:
tests/test_install.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
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


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def exposure(unit: str, env: dict[str, str] | None = None) -> float:
    """The overall exposure ``systemd-analyze security`` gives the unit (0 best, 10 worst)."""
    rated = analyze("security", "--offline=yes", "--no-pager", unit, env=env)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", rated.stdout)
    assert m, f"no overall exposure in: {rated.stdout[-500:]} {rated.stderr}"
    return float(m.group(1))


def test_systemd_rates_the_unit_ok():
    assert exposure(str(UNIT)) <= 2.0  # "OK"; the unit as first written was 8.6 EXPOSED


def unit_lines() -> list[tuple[str, str]]:
    """Every setting of the unit in order (a key may come more than once)."""
    found = []
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def test_the_sandboxed_unit_can_still_do_what_syncd_must():
    unit = unit_settings()
    every = unit_lines()
    # its state: /var/lib/syncd is the StateDirectory, the one place ProtectSystem=strict
    # leaves writable, and it is where syncd is told to keep its state
    assert unit["ProtectSystem"] == "strict"
    assert ("Environment", "SYNCD_HOME=/var/lib/syncd") in every
    assert unit["StateDirectory"] == "syncd" and unit["StateDirectoryMode"] == "0700"
    assert unit["UMask"] == "0077"
    # the network: mail servers, Google and Microsoft, PostgreSQL over TCP or its unix
    # socket, the metrics port, systemd's notify socket
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(unit["RestrictAddressFamilies"].split())
    assert not {"PrivateNetwork", "IPAddressDeny", "IPAddressAllow"} & set(unit)
    assert not {"SocketBindDeny", "SocketBindAllow"} & set(unit)
    # threads (sync workers, IDLE watchers): the task cap leaves room for them
    assert int(unit["TasksMax"]) >= 64
    # it runs the venv's syncd, and reads the config the install writes
    assert unit["ExecStart"] == "/opt/syncd/bin/syncd run"
    # a config error (exit 2) is not restarted every 10 s forever
    assert unit["Restart"] == "on-failure" and unit["RestartPreventExitStatus"] == "2"
    assert ("Environment", "SYNCD_CONFIG=/etc/syncd/syncd.toml") in every


def documented_drop_in() -> str:
    """The drop-in the unit's header tells the admin to add for calendar folders."""
    text = UNIT.read_text()
    m = re.search(r"^#   \[Service\]\n((?:#   \S+=.*\n)+)", text, re.M)
    assert m, "the unit's header shows no drop-in with ReadWritePaths="
    body = "".join(line[4:] + "\n" for line in m.group(1).splitlines())
    assert body.startswith("ReadWritePaths=")
    return "[Service]\n" + body


def test_systemd_verify_finds_nothing_wrong_in_the_unit_and_its_documented_drop_in(tmp_path):
    shipped = analyze("verify", "--man=no", str(UNIT))
    complaints = set((shipped.stdout + shipped.stderr).splitlines())
    if not Path("/opt/syncd/bin/syncd").exists():  # not installed on this machine
        complaints.discard(
            "syncd.service: Command /opt/syncd/bin/syncd is not executable: No such file or "
            "directory"
        )
    assert complaints == set(), complaints
    # as installed: ExecStart exists, with the drop-in for calendar folders
    units = tmp_path / "units"
    (units / "syncd.service.d").mkdir(parents=True)
    program = tmp_path / "syncd"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = UNIT.read_text().replace("/opt/syncd/bin/syncd", str(program))
    (units / "syncd.service").write_text(text)
    (units / "syncd.service.d" / "calendars.conf").write_text(documented_drop_in())
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}  # ':' : and the system's units
    checked = analyze("verify", "--man=no", "syncd.service", env=env)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    assert exposure("syncd.service", env=env) <= 2.0
    # the check can fail: a misspelt key is reported
    (units / "syncd.service.d" / "typo.conf").write_text("[Service]\nReadWritePath=/srv\n")
    typo = analyze("verify", "--man=no", "syncd.service", env=env)
    assert "Unknown key 'ReadWritePath'" in typo.stdout + typo.stderr
