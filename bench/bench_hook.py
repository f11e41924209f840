#!/usr/bin/env python3
"""Hook latency as ratios to a bare interpreter start measured in the same run.

The hook is rendered exactly as ``hugexml install-hook`` writes it (same interpreter in the
shebang, ``-I``) into a temporary directory and executed as libvirt does: argv
``NAME OP SUBOP -``, the domain XML on stdin, libvirt's environment. Runs are interleaved
(every round runs every case once, in a shuffled order) so drift hits all cases alike.

    .venv/bin/python bench/bench_hook.py [--rounds 40] [--python PATH] [--json] [--check-goal]

Goal (issue 4): the no-op paths <= 1.3x ``python -I -c pass``.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hugexml.qemuhook.install import HOOK_BODY, render

GOAL = 1.3
PLAIN = b"""<domain type='kvm'>
  <name>bench</name>
  <uuid>0b5e7d2a-9c61-4f0e-8d2b-3c4a5e6f7a81</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/></devices>
</domain>
"""
HUGE_2M = PLAIN.replace(b"<vcpu", b"<memoryBacking><hugepages><page size='2048' unit='KiB'/>"
                                  b"</hugepages></memoryBacking>\n  <vcpu", 1)


def fake_root(base: Path) -> Optional[Path]:
    """A one-node fake sysfs/procfs for the informational 2M prepare, if the fake kernel
    used by the tests is available."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fakekernel import FakeKernel  # type: ignore[import-not-found]
    except ImportError:
        return None
    fk = FakeKernel(str(base / "root"))
    return Path(fk.root)


HUGE_1G = PLAIN.replace(b"<memory unit='MiB'>128</memory>", b"<memory unit='GiB'>2</memory>") \
    .replace(b"<vcpu", b"<memoryBacking><hugepages><page size='1048576' unit='KiB'/>"
                       b"</hugepages></memoryBacking>\n  <vcpu", 1)


def restore_host(base: Path) -> Optional[tuple[Path, Path]]:
    """A two-node fake root with both sizes mounted and a state dir as a busy host has it:
    two 1G pages kept from a guest that stopped, two guests starting (pending claims). The
    restore filter reads all of it to know what the host can supply (hugexml.alloc.supply)."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fakekernel import FakeKernel  # type: ignore[import-not-found]
    except ImportError:
        return None
    from hugexml.alloc.allocator import Allocator
    from hugexml.core.config import Config
    from hugexml.core.model import GuestId
    from hugexml.xml.domxml import plan_xml

    fk = FakeKernel(str(base / "rroot"), mounts=[("/dev/hugepages", 2048),
                                                 ("/dev/hugepages1G", 1048576)])
    state = base / "rstate"
    host = __import__("hugexml.host.hostinfo", fromlist=["x"]).read_host_info(fk.host_root)
    alloc = Allocator(fk.gateway(), str(state), Config())
    def guest(xml: bytes, name: str, n: int) -> tuple[Any, GuestId]:
        uuid = f"{n:08x}-9c61-4f0e-8d2b-3c4a5e6f7a81"
        xml = xml.replace(b"<name>bench</name>", f"<name>{name}</name>".encode()).replace(
            b"0b5e7d2a-9c61-4f0e-8d2b-3c4a5e6f7a81", uuid.encode())
        return plan_xml(xml, host), GuestId(name, uuid)

    gone = guest(HUGE_1G, "gone", 1)
    alloc.reserve(*gone)
    alloc.settle(gone[1])
    alloc.release(gone[1])  # its 2 x 1G pages are kept (1G=10m)
    for i in range(2):
        alloc.reserve(*guest(HUGE_2M, f"vm{i}", 2 + i))
    return Path(fk.root), state


def measure(cases: dict[str, tuple[list[str], bytes, dict[str, str]]],
            rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for _ in range(3):  # warm caches (pyc, page cache)
        for name in names:
            argv, data, env = cases[name]
            subprocess.run(argv, input=data, capture_output=True, env=env, check=False)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            argv, data, env = cases[name]
            start = time.perf_counter()
            proc = subprocess.run(argv, input=data, capture_output=True, env=env, check=False)
            times[name].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"{name}: exit {proc.returncode}: {proc.stderr.decode()}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check-goal", action="store_true",
                        help="exit 1 when a no-op path is over the goal (for a quiet machine: "
                        "CI's smoke run prints the ratios and asserts no timing)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hugexml-bench-") as tmp:
        base = Path(tmp)
        hook = base / "hugexml"
        repo = str(Path(__file__).resolve().parents[1])
        probe = subprocess.run([args.python, "-I", "-c", "import hugexml.qemuhook.dispatch"],
                               capture_output=True, check=False)
        hook.write_text(render(HOOK_BODY, args.python, None if probe.returncode == 0 else repo))
        hook.chmod(0o755)
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/root",
               "HUGEXML_STATE_DIR": str(base / "state")}
        # the state of a host where another guest has a claim: release/started of this one
        # stop at a stat of guests/<uuid>.json and a look at the due file
        (base / "state" / "guests").mkdir(parents=True)
        (base / "state" / "guests" / "00000000-0000-4000-8000-0000000000aa.json").write_text("{}")
        h = [str(hook), "bench"]
        cases: dict[str, tuple[list[str], bytes, dict[str, str]]] = {
            "python -I -c pass (baseline)": ([args.python, "-I", "-c", "pass"], PLAIN, env),
            "unhandled op (start begin)": ([*h, "start", "begin", "-"], PLAIN, env),
            "prepare begin, no hugepages": ([*h, "prepare", "begin", "-"], PLAIN, env),
            "release end, no hugepages": ([*h, "release", "end", "-"], PLAIN, env),
        }
        info: list[str] = []
        has_lxml = subprocess.run([args.python, "-I", "-c", "import lxml.etree"],
                                  capture_output=True, check=False).returncode == 0
        root = fake_root(base) if has_lxml else None
        if not has_lxml:
            print(f"note: {args.python} has no lxml: the 2M-guest cases are left out",
                  file=sys.stderr)
        if root is not None:
            fenv = dict(env, HUGEXML_ROOT=str(root), HUGEXML_STATE_DIR=str(base / "fstate"))
            # prepare + release so every round starts from the same pool
            cases["prepare begin, 2M guest, fake root"] = (
                [*h, "prepare", "begin", "-"], HUGE_2M, fenv)
            cases["release end, 2M guest, fake root"] = (
                [*h, "release", "end", "-"], HUGE_2M, fenv)
            info = ["prepare begin, 2M guest, fake root", "release end, 2M guest, fake root"]
            rhost = restore_host(base)
            if rhost is not None:
                renv = dict(env, HUGEXML_ROOT=str(rhost[0]), HUGEXML_STATE_DIR=str(rhost[1]))
                cases["restore begin, 1G guest, fake root"] = (
                    [*h, "restore", "begin", "-"], HUGE_1G, renv)
                info.append("restore begin, 1G guest, fake root")
        times = measure(cases, args.rounds)

    baseline = statistics.median(times["python -I -c pass (baseline)"])
    report: dict[str, Any] = {"python": args.python, "rounds": args.rounds, "goal": GOAL,
                              "cases": {}}
    width = max(map(len, times))
    if not args.json:
        print(f"hook latency vs `{args.python} -I -c pass`, {args.rounds} interleaved rounds "
              "(median ratio; goal for no-op paths <= %.1fx)" % GOAL)
    failed = False
    for name, samples in times.items():
        ratio = statistics.median(samples) / baseline
        noop = name not in info and "baseline" not in name
        ok = ratio <= GOAL if noop else None
        failed |= ok is False
        report["cases"][name] = {"ratio": round(ratio, 3), "within_goal": ok}
        if not args.json:
            tag = "" if ok is None else ("  ok" if ok else "  OVER GOAL")
            tag = "  (information)" if name in info else tag
            print(f"  {name:<{width}}  {ratio:5.2f}x{tag}")
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if failed and args.check_goal else 0


if __name__ == "__main__":
    sys.exit(main())
