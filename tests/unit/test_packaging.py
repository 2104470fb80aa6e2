"""The distribution as it installs: what the wheel holds, and which extra each daemon's imports need.

A compute node installs only the base (``nfv-doctor[agent]``, docs/install.md): everything ``doctor-agent``
imports must come from the base's dependencies, and nothing of the controllers' (grpcio's C-core, etcd,
OpenStack, aiohttp) may be loaded by it. The lab and the tests stay in the source tree, out of the wheel.
The imports are traced in a fresh interpreter (``python -c``); nothing is installed.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIPPED = ("agent", "controller_adapter", "doctor_common", "inspector", "notifier")
# what a compute node must never load: the controllers' libraries, the stub generator, the lab
NOT_ON_A_COMPUTE_NODE = ("grpc", "grpc_tools", "grpc_health", "grpc_reflection", "aetcd", "aiohttp",
                         "prometheus_client", "openstack", "keystoneauth1", "pyroute2", "doctor_common.lab",
                         "inspector", "notifier", "controller_adapter")


def norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared(*extras: str) -> list[str]:
    """The requirement strings of the base plus the named extras, as pyproject.toml says."""
    project = PYPROJECT["project"]
    return [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]


def closure(reqs: list[str]) -> set[str]:
    """The distributions these requirements bring, transitively (as installed here; extras of others ignored)."""
    seen: set[str] = set()
    todo = [Requirement(r).name for r in reqs]
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            subs = requires(name) or []
        except PackageNotFoundError:
            continue
        for sub in subs:
            req = Requirement(sub)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def distributions_of(modules: set[str]) -> set[str]:
    """Third-party distributions providing these modules (stdlib and the project itself left out)."""
    owners = packages_distributions()
    # _distutils_hack: setuptools' .pth hook, which site loads in every interpreter of a venv that has setuptools
    tops = {m.split(".")[0] for m in modules} - set(SHIPPED) - set(sys.stdlib_module_names) - {"_distutils_hack"}
    return {norm(d) for t in tops for d in owners.get(t, []) if norm(d) != "nfv-doctor"}


# A fresh interpreter imports the agent as ``doctor-agent`` does, every module of the agent package, and then
# every module any loaded project module imports anywhere (inside functions too: the ipmi checker's LAN
# session, say), until nothing new comes; it prints sys.modules.
TRACE = r'''
import ast, importlib, json, pkgutil, sys
from pathlib import Path
sys.modules.setdefault("ssl", None)  # as agent/__main__.py:run
import agent, agent.main
todo = [m.name for m in pkgutil.walk_packages(agent.__path__, "agent.")]
scanned = set()
def imports(path):
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module != "__future__":
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
while todo:
    name = todo.pop()
    try:
        importlib.import_module(name)
    except ImportError:
        continue  # ``from x import attribute``: x itself is in the list
    for mod in list(sys.modules.values()):
        n = getattr(mod, "__name__", "")
        if n.split(".")[0] in ("agent", "doctor_common") and n not in scanned and getattr(mod, "__file__", None):
            scanned.add(n)
            todo.extend(imports(mod.__file__))
print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None)))
'''


@pytest.fixture(scope="module")
def agent_modules() -> set[str]:
    out = subprocess.run([sys.executable, "-c", TRACE], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def test_the_agent_loads_nothing_of_the_controllers(agent_modules: set[str]) -> None:
    """Every agent module and whatever it imports, lazily or not: no grpcio, etcd, OpenStack, aiohttp, lab."""
    assert "agent.checkers.ipmi_client" in agent_modules and "grpclib.client" in agent_modules  # the trace ran
    assert "pyghmi.ipmi.private.session" in agent_modules  # and followed the lazy imports (the LAN session)
    loaded = sorted(m for m in agent_modules if m.startswith(tuple(f"{n}." for n in NOT_ON_A_COMPUTE_NODE))
                    or m in NOT_ON_A_COMPUTE_NODE)
    assert loaded == []


def test_the_base_dependencies_cover_the_agent(agent_modules: set[str]) -> None:
    """A compute node installs the base (= the [agent] extra) only: it must bring all the agent imports."""
    assert PYPROJECT["project"]["optional-dependencies"]["agent"] == []
    needed = distributions_of(agent_modules)
    assert {"grpclib", "protobuf", "psutil", "pyghmi"} <= needed
    assert needed - closure(declared()) == set()


def test_every_import_of_the_shipped_code_is_declared() -> None:
    """Each third-party module imported anywhere in the wheel's packages comes from the base or a production
    extra (inspector, openstack, client); only the stub generator (grpc_tools, `make proto`) is a [test] one."""
    found: dict[str, set[str]] = {}
    for pkg in SHIPPED:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("doctor_common", "lab"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module
                         else [])
                for n in names:
                    found.setdefault(n.split(".")[0], set()).add(str(rel))
    assert found.pop("grpc_tools") == {"doctor_common/protogen.py"}
    production = closure(declared("inspector", "openstack", "client"))
    undeclared = {d: sorted(found[t]) for t in found for d in distributions_of({t}) if d not in production}
    assert undeclared == {}
    assert not {"grpcio-tools", "pytest", "pyroute2"} & production  # the generator and the lab's needs: [test]


@pytest.mark.parametrize(("modules", "extra", "expected"), [
    ("inspector.main, inspector.core", "inspector", {"aetcd", "grpcio", "aiohttp"}),
    ("doctor_common.ctl, doctor_common.client", "client", {"grpcio"}),
])
def test_an_extra_covers_its_command(modules: str, extra: str, expected: set[str]) -> None:
    """``doctor-inspector`` imports at start only what [inspector] brings (OpenStack only when configured);
    ``doctorctl`` and the client library what [client] brings."""
    code = (f"import json, sys, {modules}\n"
            "print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert [m for m in loaded if m.split(".")[0] in ("openstack", "keystoneauth1")
            or m.startswith("doctor_common.lab")] == []
    # grpcio imports grpc_tools when present, optionally: not a dependency
    needed = distributions_of(loaded) - {"grpcio-tools"}
    assert expected <= needed
    assert needed - closure(declared(extra)) == set()


def test_the_wheel_holds_the_daemons_but_not_the_lab_nor_tests(tmp_path: Path) -> None:
    """Built from a copy of this tree (a stale *.egg-info included, as a developer's tree has one): the five
    packages, the stubs' .pyi and py.typed, the console scripts; no doctor_common/lab, tests, bench."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", ".demo",
                                                               ".pytest_cache"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("nfv_doctor-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(meta).decode()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == set(SHIPPED)
    assert [n for n in names if "/lab/" in n or n.startswith(("tests/", "bench/"))] == []
    assert {"doctor_common/py.typed", "doctor_common/api/agent_pb2.pyi", "agent/checkers/nic.py",
            "inspector/main.py"} <= set(names)
    scripts = entry_points.split("[console_scripts]")[1].split("[")[0]
    assert {line.split(" = ")[0] for line in scripts.split("\n") if " = " in line} == {
        "doctor-agent", "doctor-inspector", "doctorctl"}


def test_a_missing_extra_is_named_with_the_command_that_installs_it() -> None:
    """Configured for OpenStack on an install without [openstack]: the message says what to install."""
    from doctor_common.extras import OPENSTACK, missing

    assert missing("openstack", OPENSTACK) is None  # installed here
    why = missing("openstack", {"json": "stdlib", "no_such_module_for_doctor": "no-such-dist"})
    assert why == "needs no-such-dist, not installed here: pip install 'nfv-doctor[openstack]'"


def test_the_extras_checked_at_start_up_are_the_declared_ones() -> None:
    """What doctor_common.extras looks for is what pyproject.toml's extras install (a rename breaks both)."""
    from doctor_common.extras import INSPECTOR, OPENSTACK

    extras = PYPROJECT["project"]["optional-dependencies"]
    for modules, extra in ((INSPECTOR, "inspector"), (OPENSTACK, "openstack")):
        assert set(modules.values()) <= {Requirement(r).name for r in extras[extra]}
        assert distributions_of(set(modules)) == {norm(d) for d in modules.values()}  # import name -> dist


def test_doctor_inspector_without_its_extra_says_what_to_install() -> None:
    """The command exists on a compute node's install too: there it exits 2 (no restart) naming the extra."""
    code = "import sys; sys.modules['aetcd'] = None; from inspector.__main__ import run; sys.exit(run())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip() == "doctor-inspector needs aetcd, not installed here: pip install 'nfv-doctor[inspector]'"
    ok = subprocess.run([sys.executable, "-m", "inspector", "--version"], capture_output=True, text=True,
                        timeout=60, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.startswith("doctor-inspector "), ok.stderr
