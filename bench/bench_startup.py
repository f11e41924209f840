#!/usr/bin/env python3
"""The start-up table of issue 14: each hugexml command as a whole process, next to its
baseline measured in the same run, interleaved (every round runs every case once, in a
shuffled order) and reported as the ratio of the medians, never as bare times.

  rewrite       ``hugexml rewrite --page-size 2M DOMAIN``
                vs ``virt-xml --connect test:///default --edit --memorybacking ...``
                vs ``python -c 'import lxml.etree'``
  allocate      ``hugexml allocate --size 2M --count 4096 --node 0`` (real kernel)
                vs ``python -I -c pass`` + a raw write of the same count to sysfs
  hook          the installed hook's ``prepare begin`` + ``release end`` of an 8 GiB 2M guest
                (real kernel) vs ``python -c 'import lxml.etree'`` + a raw grow +
                ``python -I -c pass`` + a raw shrink
  hook RSS      the hook's prepare, peak RSS vs ``python -c 'import lxml.etree'``

The state dir is on tmpfs (``/dev/shm``), as ``/run/hugexml`` is on EL and Fedora hosts.
Where this machine's ``/run`` is not tmpfs (this test bed's is ext4, where the ledger's
fsyncs cost a few ms), one more row measures ``allocate`` with the state dir there.

Real-kernel cases need root; they take the real-host test lock and put every pool back.
``--rounds 1`` is the CI smoke run: it prints the table and asserts nothing.

    .venv/bin/python bench/bench_startup.py [--rounds 15] [--json]
"""
from __future__ import annotations

import argparse
import compileall
import fcntl
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = "/run/lock/hugexml-tests.lock"
NR = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
PAGES = 4096  # 8 GiB of 2M pages
DOMAIN = """<domain type='kvm'>
  <name>bench</name>
  <uuid>0badbe9c-0000-4000-8000-000000000001</uuid>
  <memory unit='GiB'>{gib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  {backing}
</domain>
"""
BACKING = ("<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages>"
           "<source type='memfd'/></memoryBacking>")  # memfd: no mount needed


def run(argv: list[str], stdin: bytes = b"", env: dict | None = None) -> tuple[float, int]:
    """(seconds, peak RSS KiB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:4])}...: exit {status}: {err.decode()[-300:]}")
    return took, usage.ru_maxrss


def raw_write(count: int) -> float:
    start = time.perf_counter()
    Path(NR).write_text(f"{count}\n")
    return time.perf_counter() - start


def fs_type(path: str) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point above it)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) \
                    and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def median_ratio(times: dict[str, list[float]], case: str, base: str) -> float:
    return statistics.median(times[case]) / statistics.median(times[base])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    python = str(REPO / ".venv/bin/python")
    hugexml = str(REPO / ".venv/bin/hugexml")
    real = os.geteuid() == 0 and os.path.exists(NR)
    # as installed: the RPM ships byte-compiled modules (and PYTHONDONTWRITEBYTECODE, if set,
    # would otherwise make every run compile what changed since the last cache write)
    compileall.compile_dir(str(REPO / "hugexml"), quiet=1)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and fs_type("/dev/shm") == "tmpfs" else None
    work = Path(tempfile.mkdtemp(prefix="hugexml-bench-", dir=shm))
    run_fs = fs_type("/run")
    run_state = Path(tempfile.mkdtemp(prefix="hugexml-bench-", dir="/run")) \
        if real and run_fs != "tmpfs" else None
    small = work / "dom.xml"
    small.write_text(DOMAIN.format(gib=1, backing=""))
    guest = DOMAIN.format(gib=PAGES * 2 // 1024, backing=BACKING).encode()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
           "HUGEXML_STATE_DIR": str(work / "state"), "HUGEXML_CONFIG": str(work / "none.conf")}
    (work / "none.conf").write_text("[hook]\nlog = none\n[allocation]\nmargin_min = 0\n"
                                    "margin_percent = 0\n")
    hook = work / "hugexml-hook"
    sys.path.insert(0, str(REPO))
    from hugexml.qemuhook.install import HOOK_BODY, render

    hook.write_text(render(HOOK_BODY, python, str(REPO)))
    hook.chmod(0o755)
    virt_xml = shutil.which("virt-xml")
    times: dict[str, list[float]] = {}
    rss: dict[str, list[int]] = {}

    def note(name: str, took: float, peak: int = 0) -> None:
        times.setdefault(name, []).append(took)
        rss.setdefault(name, []).append(peak)

    cases = {
        "rewrite": lambda: note("rewrite", *run([hugexml, "rewrite", "--page-size", "2M",
                                                  str(small)], env=env)),
        "lxml": lambda: note("lxml", *run([python, "-c", "import lxml.etree"])),
        "pass": lambda: note("pass", *run([python, "-I", "-c", "pass"])),
    }
    if virt_xml:
        cases["virt-xml"] = lambda: note("virt-xml", *run(
            [virt_xml, "--connect", "test:///default", "--edit", "--memorybacking",
             "hugepages.page0.size=2,hugepages.page0.unit=M", "--print-xml"],
            small.read_bytes()))
    lock = None
    if real:
        lock = open(LOCK, "w")  # held for the whole run
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = int(Path(NR).read_text())

        def allocate() -> None:
            note("allocate", *run([hugexml, "allocate", "--size", "2M", "--count", str(PAGES),
                                   "--node", "0"], env=env))
            shutil.rmtree(work / "state", ignore_errors=True)
            Path(NR).write_text(f"{before}\n")

        def raw_allocate() -> None:
            took, _ = run([python, "-I", "-c", "pass"])
            note("raw allocate", took + raw_write(before + PAGES))
            Path(NR).write_text(f"{before}\n")

        def hook_pair() -> None:
            a, peak = run([str(hook), "bench", "prepare", "begin", "-"], guest, env)
            b, _ = run([str(hook), "bench", "release", "end", "-"], guest, env)
            note("hook", a + b, peak)
            rss.setdefault("hook prepare", []).append(peak)
            Path(NR).write_text(f"{before}\n")

        def raw_pair() -> None:
            a, peak = run([python, "-c", "import lxml.etree"])
            grow = raw_write(before + PAGES)
            c, _ = run([python, "-I", "-c", "pass"])
            shrink = raw_write(before)
            note("raw pair", a + grow + c + shrink, peak)

        cases.update({"allocate": allocate, "raw allocate": raw_allocate, "hook": hook_pair,
                      "raw pair": raw_pair})
        if run_state is not None:
            run_env = dict(env, HUGEXML_STATE_DIR=str(run_state / "state"))

            def allocate_run_fs() -> None:
                note("allocate, state on /run", *run(
                    [hugexml, "allocate", "--size", "2M", "--count", str(PAGES), "--node", "0"],
                    env=run_env))
                shutil.rmtree(run_state / "state", ignore_errors=True)
                Path(NR).write_text(f"{before}\n")

            cases["allocate, state on /run"] = allocate_run_fs
    try:
        for name in cases:  # one round not counted: page cache, first touch of the pool
            cases[name]()
        times.clear()
        rss.clear()
        for _ in range(max(1, args.rounds)):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                cases[name]()
    finally:
        if lock is not None:
            Path(NR).write_text(f"{before}\n")
            lock.close()
        shutil.rmtree(work, ignore_errors=True)
        if run_state is not None:
            shutil.rmtree(run_state, ignore_errors=True)
    rows = []
    if "virt-xml" in times:
        rows.append(("rewrite vs virt-xml (times faster; goal >= 4)",
                     1 / median_ratio(times, "rewrite", "virt-xml")))
    rows.append(("rewrite vs import lxml.etree (goal <= 1.25)",
                 median_ratio(times, "rewrite", "lxml")))
    if real:
        rows.append(("allocate 4096 x 2M vs python -I + raw write (goal <= 1.3)",
                     median_ratio(times, "allocate", "raw allocate")))
        if run_state is not None:
            rows.append((f"  the same, state dir on this machine's /run ({run_fs})",
                         median_ratio(times, "allocate, state on /run", "raw allocate")))
        rows.append(("hook prepare+release, 8 GiB 2M vs baselines (goal <= 1.3)",
                     median_ratio(times, "hook", "raw pair")))
        rows.append(("hook prepare peak RSS vs import lxml.etree (goal <= 1.3)",
                     statistics.median(rss["hook prepare"]) / statistics.median(rss["lxml"])))
    if args.json:
        print(json.dumps({name: round(value, 3) for name, value in rows}, indent=2))
    else:
        print(f"hugexml start-up, {max(1, args.rounds)} interleaved rounds (ratio of medians)")
        for name, value in rows:
            print(f"  {name:<62} {value:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
