"""scripts/numa-vm and the numavm batch, without booting: the vng command line it builds, and
the report the VM's pytest writes back (tests/numavm/conftest.py)."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def numa_vm() -> types.ModuleType:
    loader = importlib.machinery.SourceFileLoader("numa_vm", str(REPO / "scripts/numa-vm"))
    spec = importlib.util.spec_from_loader("numa_vm", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_vng_command_line_one_numa_option_per_node(tmp_path):
    nv = numa_vm()
    args = nv.parse_args(["--nodes", "4", "--node-mem", "2G,4G,512M,4G", "--cpus", "2",
                          "--append", "hugepagesz=2M hugepages=1:8", "--", "hugexml", "status"])
    args.preload, args.tmp = "", str(tmp_path)
    argv = nv.vng_argv(args, "/boot/vmlinuz-x", "/venv/bin/vng")
    assert argv[:7] == ["/venv/bin/vng", "--run", "/boot/vmlinuz-x", "--disable-kvm", "--cpus",
                        "2", "--memory"]
    assert argv[7] == f"{2048 + 4096 + 512 + 4096}M"
    numa = [argv[i + 1] for i, a in enumerate(argv) if a == "--numa"]
    assert numa == ["2048M,cpus=0", "4096M,cpus=1", "512M", "4096M"]
    assert argv[argv.index("--append") + 1] == "hugepagesz=2M hugepages=1:8"
    assert argv[-2:] == ["--exec", "hugexml status"]


def test_a_long_command_goes_to_a_script_not_the_kernel_command_line(tmp_path):
    nv = numa_vm()
    words = [f"tests/numavm/test_x.py::test_{i}[a b]" for i in range(40)]
    args = nv.parse_args(["--", "pytest", *words])
    args.preload, args.tmp = "cd /x", str(tmp_path)
    argv = nv.vng_argv(args, "/k", "/vng")
    assert argv[-1] == f"exec sh {tmp_path}/command.sh"
    script = (tmp_path / "command.sh").read_text()
    assert script.startswith("cd /x && exec pytest ") and "'tests/numavm/test_x.py::test_39[a b]'" \
        in script


@pytest.mark.parametrize("argv, words", [
    (["--node-mem", "2G,2Q", "--", "true"], "is not like 512M or 2G"),
    (["--nodes", "0", "--", "true"], "--nodes must be 1-64"),
    ([], "give a command after --"),
])
def test_bad_arguments(argv, words, capsys):
    with pytest.raises(SystemExit):
        numa_vm().parse_args(argv)
    assert words in capsys.readouterr().err


def test_inner_report_keeps_each_tests_outcome_and_failure_text(tmp_path):
    spec = importlib.util.spec_from_file_location("numavm_conftest",
                                                  REPO / "tests/numavm/conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = str(tmp_path / "report.json")
    report = module.InnerReport(path)

    def rep(nodeid, when, outcome, text="", longrepr=None):
        return types.SimpleNamespace(nodeid=nodeid, when=when, duration=0.5,
                                     failed=outcome == "failed", skipped=outcome == "skipped",
                                     longreprtext=text, sections=[("Captured stdout", "out")],
                                     longrepr=longrepr)

    report.add(rep("t::ok", "setup", "passed"))
    report.add(rep("t::ok", "call", "passed"))
    report.add(rep("t::bad", "call", "failed", "assert 1 == 2"))
    report.add(rep("t::bad", "teardown", "failed", "pools not restored"))
    report.add(rep("t::skip", "setup", "skipped", longrepr=("f.py", 3, "Skipped: no 1G")))
    report.write()
    data = json.loads(Path(path).read_text())
    assert data["exitstatus"] is None and not os.path.exists(path + ".tmp")
    tests = data["tests"]
    assert tests["t::ok"] == {"outcome": "passed", "text": "", "duration_s": 1.0}
    assert tests["t::bad"]["outcome"] == "failed"
    assert "assert 1 == 2" in tests["t::bad"]["text"]
    assert "[teardown] pools not restored" in tests["t::bad"]["text"]
    assert "--- Captured stdout ---\nout" in tests["t::bad"]["text"]
    assert tests["t::skip"] == {"outcome": "skipped", "text": "Skipped: no 1G",
                                "duration_s": 0.5}


def numavm_conftest() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("numavm_conftest_batch",
                                                  REPO / "tests/numavm/conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SILENT = {"rc": 255, "log": "", "vm_s": 17.2, "error": "no report from inside the VM"}
PASSED = {"rc": 0, "log": "....", "vm_s": 60.0, "tests": {"t::a": {"outcome": "passed"}}}


@pytest.mark.parametrize("boots, expected_boots, retried", [
    ([SILENT, PASSED], 2, "exit 255 after 17 s with no output"),   # silent death: once more
    ([PASSED], 1, None),                                            # fine: one boot
    ([dict(SILENT, log="Kernel panic"), PASSED], 1, None),          # it said why: no retry
    ([SILENT, SILENT], 2, "exit 255 after 17 s with no output"),    # fails twice: fails
])
def test_a_vm_that_dies_without_a_word_is_booted_once_more(boots, expected_boots, retried):
    module = numavm_conftest()
    batch = module.Batch(config=None)
    queue = list(boots)
    batch._boot = lambda group: dict(queue.pop(0))
    result = batch.run("boot")
    assert len(boots) - len(queue) == expected_boots
    assert result.get("retried") == retried
    assert ("tests" in result) == (boots[expected_boots - 1] is PASSED)
