"""numavm: tests that run inside a VM with real NUMA nodes, batched one boot per group.

On the host, every collected test marked ``numavm(GROUP)`` is replaced by a proxy item of
the same node id. The first proxy of a group to run boots the group's VM once
(``scripts/numa-vm``, layout and kernel command line from ``groups.GROUPS``) and runs ONE
pytest session inside on the group's selected tests; each proxy then reports its own test's
outcome, with the failure text from inside. xfail marks apply outside (inside runs with
``--runxfail``), so ``xfail(strict=True)`` behaves as anywhere else.

Inside the VM (``HUGEXML_NUMAVM`` names the group) the tests run for real, and a small
plugin here writes each test's outcome to ``HUGEXML_NUMAVM_REPORT`` (a JSON file in a
``--rwdir`` the host reads back).

A group that cannot boot (no root, no kernel image, no vng) skips its tests, and fails them
under ``HUGEXML_REQUIRE_REAL=1`` (what ``scripts/test`` sets as root).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
INSIDE = os.environ.get("HUGEXML_NUMAVM", "")
REPORT_ENV = "HUGEXML_NUMAVM_REPORT"
REQUIRE_REAL = os.environ.get("HUGEXML_REQUIRE_REAL") == "1"
LOG_TAIL = 6000  # characters of the VM's output shown when a whole group fails
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # groups.py and vmkit.py, for the host and the guest alike


def group_of(item: pytest.Item) -> Optional[str]:
    mark = item.get_closest_marker("numavm")
    if mark is None:
        return None
    if len(mark.args) != 1 or mark.args[0] not in _groups():
        raise pytest.UsageError(f"{item.nodeid}: numavm needs one group of "
                                f"{sorted(_groups())} (tests/numavm/groups.py)")
    return str(mark.args[0])


def _groups() -> dict[str, Any]:
    from groups import GROUPS

    return GROUPS


# --- inside the VM: run for real, report each test ---------------------------------------
class InnerReport:
    def __init__(self, path: str) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.started = time.monotonic()

    def add(self, report: pytest.TestReport) -> None:
        row = self.tests.setdefault(report.nodeid, {"outcome": "passed", "text": "",
                                                     "duration_s": 0.0})
        row["duration_s"] += report.duration
        if report.failed:
            row["outcome"] = "failed"
            where = "" if report.when == "call" else f"[{report.when}] "
            row["text"] += where + report.longreprtext + "\n"
            for name, content in report.sections:
                row["text"] += f"--- {name} ---\n{content}\n"
        elif report.skipped and row["outcome"] == "passed":
            row["outcome"] = "skipped"
            longrepr = report.longrepr
            row["text"] += str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)

    def write(self, exitstatus: Optional[int] = None) -> None:
        """After every test (a VM killed on its timeout still reports what ran) and at the
        end (with the session's exit status)."""
        data = {"tests": self.tests, "errors": self.errors, "exitstatus": exitstatus,
                "inner_s": time.monotonic() - self.started}
        with open(self.path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(self.path + ".tmp", self.path)


_INNER: list[InnerReport] = []  # inside the VM with a report path: the one report


_BATCH: Any = pytest.StashKey()  # on the host: the Batch


def pytest_configure(config: pytest.Config) -> None:
    if INSIDE and os.environ.get(REPORT_ENV):
        _INNER[:] = [InnerReport(os.environ[REPORT_ENV])]
    elif not INSIDE:
        config.stash[_BATCH] = Batch(config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for inner in _INNER:
        inner.add(report)
        if report.when == "teardown":
            inner.write()


def pytest_collectreport(report: pytest.CollectReport) -> None:
    for inner in _INNER:
        if report.failed:
            inner.errors.append(f"collecting {report.nodeid}: {report.longreprtext}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for inner in _INNER:
        inner.write(exitstatus)


# --- on the host: proxies and one VM boot per group --------------------------------------
class Batch:
    """The host side: which proxies belong to which group, and each group's one run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.selected: dict[str, list[str]] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def unavailable(self) -> Optional[str]:
        if os.geteuid() != 0:
            return "needs root (the VM's tests change hugepage pools and mount hugetlbfs)"
        if not any(n.startswith("vmlinuz-") for n in os.listdir("/boot")):
            return "no kernel image in /boot (scripts/setup installs linux-image-amd64)"
        if not (os.access(os.path.join(REPO, ".venv/bin/vng"), os.X_OK) or shutil.which("vng")):
            return "virtme-ng is not installed (scripts/setup installs it into .venv)"
        for tool in ("qemu-system-x86_64", "busybox"):
            if not shutil.which(tool):
                return f"{tool} is not installed (scripts/setup)"
        return None

    def result(self, group: str) -> dict[str, Any]:
        if group not in self.results:
            reason = self.unavailable()
            self.results[group] = {"unavailable": reason} if reason else self.run(group)
        return self.results[group]

    def run(self, group: str) -> dict[str, Any]:
        """One boot of the group's VM; a second one only when the first died without a word
        (no report, no output at all: seen once in a full CI-like run, exit 255 after 17 s,
        never reproduced alone). The summary says so; a VM that fails twice fails."""
        result = self._boot(group)
        if "error" in result and "tests" not in result and not result["log"].strip():
            first = f"exit {result['rc']} after {result['vm_s']:.0f} s with no output"
            result = self._boot(group)
            result["retried"] = first
        return result

    def _boot(self, group: str) -> dict[str, Any]:
        spec = _groups()[group]
        out = tempfile.mkdtemp(prefix=f"numavm-{group}-")
        report = os.path.join(out, "report.json")
        log_path = os.path.join(out, "vm.log")
        inner = ["env", f"HUGEXML_NUMAVM={group}", f"{REPORT_ENV}={report}", "PYTHONUNBUFFERED=1",
                 "HUGEXML_REQUIRE_REAL=1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1",
                 os.path.join(REPO, ".venv/bin/python"), "-m", "pytest", "-p", "no:cacheprovider",
                 "-q", "--runxfail", "-o", "console_output_style=classic",
                 *self.selected[group]]
        argv = [os.path.join(REPO, "scripts/numa-vm"), "--nodes", str(spec.nodes),
                "--cpus", str(spec.cpus),
                "--node-mem", ",".join(spec.node_mem), "--preload-python", "--rwdir", out,
                "--timeout", str(spec.timeout_s)]
        if spec.append:
            argv += ["--append", " ".join(spec.append)]
        argv += ["--", *inner]
        started = time.monotonic()
        # The VM's output goes to a file (tail -f it while the group runs).
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT)
        vm_s = time.monotonic() - started
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        result: dict[str, Any] = {"rc": proc.returncode, "log": text, "vm_s": vm_s,
                                  "command": shlex.join(argv)}
        try:
            with open(report, encoding="utf-8") as fh:
                result.update(json.load(fh))
        except (OSError, ValueError) as exc:
            result["error"] = f"no report from inside the VM ({exc}); exit {proc.returncode}"
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if result.get("errors"):
            result["error"] = "\n".join(result["errors"])
        elif result.get("exitstatus") is None and "error" not in result:
            result["error"] = (f"the VM stopped before its pytest session ended "
                               f"(exit {proc.returncode})")
        return result


class NumaVmItem(pytest.Item):
    """Stands on the host for one test that runs inside the group's VM."""

    def __init__(self, *, group: str, location: tuple[str, Optional[int], str],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group
        self._location = location

    def reportinfo(self) -> tuple[Any, Optional[int], str]:
        path, lineno, name = self._location
        return os.path.join(str(self.config.rootpath), path), lineno, name

    def runtest(self) -> None:
        batch: Batch = self.config.stash[_BATCH]
        result = batch.result(self.group)
        if result.get("unavailable"):
            reason = f"numavm group {self.group!r} cannot run: {result['unavailable']}"
            if REQUIRE_REAL:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        row = result.get("tests", {}).get(self.nodeid)
        if row is None:
            tail = result["log"][-LOG_TAIL:]
            pytest.fail(f"not run inside the VM of group {self.group!r}: "
                        f"{result.get('error') or 'no result'}\n--- VM output (tail) ---\n{tail}",
                        pytrace=False)
        if row["outcome"] == "failed":
            pytest.fail(f"inside the {self.group!r} VM:\n{row['text']}", pytrace=False)
        if row["outcome"] == "skipped":
            if REQUIRE_REAL:
                pytest.fail(f"skipped inside the VM, which must not happen here: {row['text']}",
                            pytrace=False)
            pytest.skip(f"inside the VM: {row['text']}")

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        return str(excinfo.value)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if INSIDE:
        for item in items:
            group = group_of(item)
            if group is not None and group != INSIDE:
                item.add_marker(pytest.mark.skip(reason=f"belongs to group {group!r}, this VM "
                                                        f"runs {INSIDE!r}"))
        return
    batch = config.stash[_BATCH]
    for i, item in enumerate(items):
        group = group_of(item)
        if group is None:
            continue
        proxy = NumaVmItem.from_parent(item.parent, name=item.name, group=group,
                                       location=item.location)
        proxy.own_markers.extend(getattr(item, "own_markers", []))
        proxy.keywords.update(item.keywords)
        items[i] = proxy
        batch.selected.setdefault(group, []).append(item.nodeid)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    batch = config.stash.get(_BATCH, None)
    if not batch or not batch.results:
        return
    for group, res in sorted(batch.results.items()):
        if res.get("unavailable"):
            line = f"numavm {group}: not run ({res['unavailable']})"
        else:
            counts: dict[str, int] = {}
            for row in res.get("tests", {}).values():
                counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
            inner = res.get("inner_s")
            line = (f"numavm {group}: VM {res['vm_s']:.1f} s in all, inner pytest "
                    f"{inner if inner is None else f'{inner:.1f} s'}; inside (xfail marks "
                    "apply outside): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
            if res.get("retried"):
                line += f" (booted twice: the first VM ended, {res['retried']})"
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def numavm_group() -> Any:
    """Inside the VM: the group's spec, after checking the VM is the one it describes."""
    if not INSIDE:
        pytest.fail("numavm tests run only inside the VM (tests/numavm/conftest.py)")
    spec = _groups()[INSIDE]
    nodes = sorted(int(n[4:]) for n in os.listdir("/sys/devices/system/node")
                   if n.startswith("node") and n[4:].isdigit())
    assert nodes == list(range(spec.nodes)), f"the VM has nodes {nodes}"
    with open("/proc/cmdline", encoding="utf-8") as fh:
        cmdline = fh.read().split()
    missing = [p for p in spec.append if p not in cmdline]
    assert not missing, f"kernel command line lacks {missing}: {cmdline}"
    return spec



@pytest.fixture
def vm(numavm_group: Any, tmp_path: Any) -> Any:
    """Inside the VM: a ``vmkit.Vm`` (state dir and config of this test, default 1G margin);
    afterwards every node's pools are put back and must equal what they were before."""
    import vmkit

    before = vmkit.pools()
    yield vmkit.Vm(str(tmp_path))
    vmkit.restore(before)
    after = vmkit.pools()
    assert after == before, f"pools not restored: {before} -> {after}"
