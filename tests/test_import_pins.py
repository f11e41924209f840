"""What each hot path imports, pinned: a new import shows up here, in review.

Each path runs in a fresh interpreter (``-I``, as the hook runs) and reports the hugexml
modules it loaded and which of a list of costly standard modules. The pins live in
``tests/data/import_pins.json``; after a deliberate change, rewrite them with
``HUGEXML_UPDATE_PINS=1 .venv/bin/python -m pytest tests/test_import_pins.py``.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakekernel import FakeKernel

from hugexml.cli import main as cli

PINS = Path(__file__).parent / "data" / "import_pins.json"
COSTLY = ("argparse", "configparser", "dataclasses", "inspect", "json", "logging", "psutil",
          "socket", "subprocess", "typing", "lxml.etree", "libvirt", "hashlib", "tempfile",
          "prometheus_client", "shutil")
PROBE = r"""
import os, sys
before = set(sys.modules)  # the interpreter's and site's own; what follows is the path's
sys.path.insert(0, os.environ["HUGEXML_PROBE_PATH"])  # -I ignores PYTHONPATH (RPM %check)
import io
argv = sys.argv[1:sys.argv.index("--")]
costly = sys.argv[sys.argv.index("--") + 1:]
data = sys.stdin.buffer.read()
if argv[0] == "hook":
    from hugexml.hook import main  # as every installed hook file does
    main(["qemu", *argv[1:]], io.BytesIO(data), io.BytesIO(), io.StringIO())
else:
    from hugexml.cli.main import main
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    sys.stdout, real = io.TextIOWrapper(io.BytesIO()), sys.stdout
    try:
        main(argv)
    except SystemExit:
        pass
    sys.stdout = real
loaded = set(sys.modules) - before
print(repr({"hugexml": sorted(m for m in loaded if m.startswith("hugexml")),
            "costly": sorted(m for m in costly if m in loaded)}))
"""
GUEST = (b"<domain type='kvm'><name>vm1</name><uuid>6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10"
         b"</uuid><memory unit='MiB'>128</memory>{backing}<vcpu>1</vcpu>"
         b"<os><type arch='x86_64'>hvm</type></os></domain>")
HUGE = GUEST.replace(b"{backing}", b"<memoryBacking><hugepages><page size='2048' unit='KiB'/>"
                                   b"</hugepages><source type='memfd'/></memoryBacking>")
PLAIN = GUEST.replace(b"{backing}", b"")
PATHS: dict[str, tuple[list[str], bytes]] = {
    "hook: an operation it ignores": (["hook", "vm1", "start", "begin", "-"], b""),
    "hook: prepare, no hugepages": (["hook", "vm1", "prepare", "begin", "-"], PLAIN),
    "hook: release, no claim": (["hook", "vm1", "release", "end", "-"], HUGE),
    "hook: prepare, 2M guest": (["hook", "vm1", "prepare", "begin", "-"], HUGE),
    "hook: release, 2M guest": (["hook", "vm1", "release", "end", "-"], HUGE),
    "cli: plan": (["plan", "--no-host", "-"], HUGE),
    "cli: rewrite": (["rewrite", "--page-size", "2M", "-"], PLAIN),
    "cli: allocate": (["allocate", "--size", "2M", "--count", "2", "--node", "0"], b""),
    "cli: reserve": (["reserve", "-"], HUGE),
    "cli: release": (["release", "vm1"], b""),
}


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    """Every path once, in order (the 2M guest's release finds its claim), on a fake host."""
    base = tmp_path_factory.mktemp("pins")
    fk = FakeKernel(base / "root", nodes=1)
    (base / "hugexml.conf").write_text("[hook]\nlog = none\n")
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HUGEXML_ROOT": fk.root,
           "HUGEXML_STATE_DIR": str(base / "state"),
           "HUGEXML_CONFIG": str(base / "hugexml.conf"),
           "HUGEXML_PROBE_PATH": str(Path(cli.__file__).resolve().parents[2])}
    out = {}
    for name, (argv, stdin) in PATHS.items():
        proc = subprocess.run(
            [sys.executable, "-I", "-c", PROBE, *argv, "--", *COSTLY], input=stdin,
            capture_output=True, env=env, check=False, cwd="/")
        assert proc.returncode == 0, (name, proc.stderr.decode())
        out[name] = ast.literal_eval(proc.stdout.decode().strip().splitlines()[-1])
    return out


def test_each_hot_path_imports_exactly_its_pinned_modules(seen):
    if os.environ.get("HUGEXML_UPDATE_PINS") == "1":
        PINS.write_text(json.dumps(seen, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINS.read_text())
    assert sorted(seen) == sorted(pinned)
    for name in seen:
        assert seen[name] == pinned[name], (name, {
            "new": sorted(set(seen[name]["hugexml"] + seen[name]["costly"])
                          - set(pinned[name]["hugexml"] + pinned[name]["costly"])),
            "gone": sorted(set(pinned[name]["hugexml"] + pinned[name]["costly"])
                           - set(seen[name]["hugexml"] + seen[name]["costly"]))})


def test_the_fast_paths_stay_bare(seen):
    """Whatever the pins say, these never load more than the dispatch needs."""
    dispatch = ["hugexml", "hugexml.hook", "hugexml.qemuhook", "hugexml.qemuhook.dispatch"]
    assert seen["hook: an operation it ignores"]["hugexml"] == dispatch
    for name in ("hook: prepare, no hugepages", "hook: release, no claim"):
        assert set(seen[name]["hugexml"]) <= {*dispatch, "hugexml.core", "hugexml.core.root"}, name
        assert seen[name]["costly"] == [], (name, seen[name]["costly"])
    for name in PATHS:
        costly = set(seen[name]["costly"])
        assert not {"dataclasses", "libvirt", "psutil", "prometheus_client"} & costly, name
        if "lxml.etree" not in costly:  # lxml imports inspect and typing itself
            assert not {"inspect", "typing"} & costly, (name, costly)


def test_a_command_builds_only_its_own_parser(seen):
    commands = {f"hugexml.cli.{m}" for m in cli.COMMANDS.values()}
    for name, (argv, _) in PATHS.items():
        if name.startswith("cli: "):
            loaded = commands & set(seen[name]["hugexml"])
            assert loaded == {f"hugexml.cli.{cli.COMMANDS[argv[0]]}"}, (name, loaded)


@pytest.mark.parametrize("argv, command", [
    (["plan", "x.xml"], "plan"),
    (["--root", "/r", "plan", "x"], "plan"),
    (["--root=/r", "-vv", "rewrite"], "rewrite"),
    (["--state-dir", "plan", "status"], "status"),   # "plan" is --state-dir's value
    (["--config", "/c", "qemu-args", "-h"], "qemu-args"),
    (["-h", "plan"], None),
    (["--version"], None),
    (["bogus"], None),
    ([], None),
])
def test_the_command_is_found_without_a_parser(argv, command):
    assert cli.chosen_command(argv) == command
