"""The ``hugexml`` command ends with ``os._exit`` (``cli.run``: no interpreter teardown).
Nothing may be lost by it: output larger than a pipe's buffer arrives whole, exit codes are
main's, argparse's exits keep their codes, and files written are complete."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CELL = "<cell id='{i}' cpus='{i}' memory='1' unit='GiB'/>"


def hugexml(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hugexml", *argv], input=stdin,
                          capture_output=True, timeout=120)


def big_domain(cells: int = 64, comment_kib: int = 512) -> bytes:
    numa = "".join(CELL.format(i=i) for i in range(cells))
    return (f"<domain type='kvm'><name>big</name><memory unit='GiB'>{cells}</memory>"
            f"<vcpu>{cells}</vcpu><cpu><numa>{numa}</numa></cpu>"
            f"<!-- {'x' * (comment_kib * 1024)} -->"
            "<os><type arch='x86_64'>hvm</type></os></domain>\n").encode()


def test_output_larger_than_a_pipe_arrives_whole(tmp_path: Path) -> None:
    data = big_domain()
    proc = hugexml("--root", str(tmp_path), "rewrite", "--page-size", "4K", "-", stdin=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data  # normal pages asked, normal pages had: byte for byte


def test_json_output_and_exit_codes_survive(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(big_domain())
    proc = hugexml("plan", str(path), "--json")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith(b"}"), proc.stderr
    bad = hugexml("plan", str(tmp_path / "missing.xml"))
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode().count("\n") == 1 and "missing.xml" in bad.stderr.decode()


def test_argparse_exits_keep_their_codes() -> None:
    assert hugexml("--version").returncode == 0
    usage = hugexml("no-such-command")
    assert usage.returncode == 2 and b"invalid choice" in usage.stderr
    helped = hugexml("--help")
    assert helped.returncode == 0 and b"qemu-args" in helped.stdout


def test_a_file_written_in_place_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(big_domain())
    proc = hugexml("rewrite", "--page-size", "2M", "--in-place", "--no-backup", str(path))
    assert proc.returncode == 0, proc.stderr
    out = path.read_bytes()
    assert out.endswith(b"</domain>\n") and b"<page size='2048' unit='KiB'/>" in out
    assert len(out) > 512 * 1024
