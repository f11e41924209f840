"""The boot entries: grubby where it exists, else the exact /etc/default/grub edit.

``apply_grubby`` removes every hugetlb parameter the boot entries carry and adds the new
ones in order; ``grub_default_edit`` computes the ``GRUB_CMDLINE_LINUX`` line to set and the
command that regenerates grub.cfg, and writes nothing (grub.cfg is not edited by hand).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence

from hugexml.core.errors import HostError
from hugexml.core.root import HostRoot
from hugexml.system.boot import HUGETLB_KEYS, merged_cmdline

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Optional

    Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=120)


def grubby_commands(params: Sequence[str], info_output: str) -> list[list[str]]:
    """Remove every hugetlb parameter the boot entries carry, then add ours in order."""
    existing: list[str] = []
    for m in re.finditer(r'^args="?([^"\n]*)"?\s*$', info_output, re.M):
        for token in m.group(1).split():
            if token.split("=", 1)[0] in HUGETLB_KEYS and token not in existing:
                existing.append(token)
    cmds = []
    if existing:
        cmds.append(["grubby", "--update-kernel=ALL", f"--remove-args={' '.join(existing)}"])
    cmds.append(["grubby", "--update-kernel=ALL", f"--args={' '.join(params)}"])
    return cmds


def apply_grubby(params: Sequence[str], runner: Runner = _run) -> list[str]:
    info = runner(["grubby", "--info=ALL"])
    if info.returncode != 0:
        raise HostError(path="grubby", reason=f"--info=ALL failed: {info.stderr.strip()[:200]}")
    done = []
    for argv in grubby_commands(params, info.stdout):
        result = runner(argv)
        if result.returncode != 0:
            raise HostError(path="grubby", reason=f"{shlex.join(argv[1:])} failed: "
                                                  f"{result.stderr.strip()[:200]}")
        done.append(shlex.join(argv))
    return done


def grub_default_edit(root: HostRoot, params: Sequence[str],
                      which: Callable[[str], Optional[str]] = shutil.which) -> dict[str, Any]:
    """The exact /etc/default/grub edit and the regenerate command (nothing is written)."""
    path = root.path("etc/default/grub")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc
    old = None
    current = ""
    for line in lines:
        m = re.match(r"\s*GRUB_CMDLINE_LINUX=(.*)$", line)
        if m:
            old = line
            try:
                parts = shlex.split(m.group(1))
            except ValueError as exc:
                raise HostError(path=path, reason=f"cannot read GRUB_CMDLINE_LINUX: {exc}") from exc
            current = " ".join(parts)
    new = f'GRUB_CMDLINE_LINUX="{merged_cmdline(current, params)}"'
    if which("update-grub"):
        regen = "update-grub"
    elif which("grub2-mkconfig") or os.path.isdir(root.path("boot/grub2")):
        regen = "grub2-mkconfig -o /boot/grub2/grub.cfg"
    else:
        regen = "grub-mkconfig -o /boot/grub/grub.cfg"
    return {"file": "/etc/default/grub", "old": old, "new": new, "regenerate": regen}
