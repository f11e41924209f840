"""Install and remove the libvirt qemu hook, and say when the daemon must restart.

Two layouts: ``/etc/libvirt/hooks/qemu.d/hugexml`` (libvirt >= 6.5, the default) and, with
``legacy``, a ``/etc/libvirt/hooks/qemu`` dispatcher that keeps an admin's existing hook as
``qemu.hugexml-orig`` and runs it first. Every file we write carries a marker line with the
sha256 of the rest of the file, so uninstall removes only what we wrote and left unedited.
The hook text is ``hooks/qemu`` (kept equal to ``HOOK_BODY`` by the tests) with an absolute
interpreter in the shebang: never a pyenv shim, and one that can import hugexml.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any, Optional

from hugexml.core.errors import HostError, InvalidInput
from hugexml.core.root import HostRoot

HOOKS_DIR = "etc/libvirt/hooks"
DROPIN = "etc/libvirt/hooks/qemu.d/hugexml"
LEGACY = "etc/libvirt/hooks/qemu"
ORIGINAL_SUFFIX = ".hugexml-orig"
PLACEHOLDER_PYTHON = "/usr/bin/python3"
MARKER = "# hugexml-hook sha256="

# Both hook files share one guard: when hugexml cannot be imported, only a prepare of a
# hugepage guest fails; every other call exits 0, and os._exit keeps a closed pipe from
# turning that 0 into 120. Only the header, the entry point and its call differ.
_GUARDED = """\
@HEAD@# libvirt stops a running guest whose started/reconnect hook exits non-zero: only prepare may
# fail, so even a broken installation (hugexml not importable) exits 0 everywhere else.
import os
import sys

try:
    from hugexml.hook import @ENTRY@
except BaseException as exc:
    code = 0  # started/reconnect/release: never stop a guest; filters: XML unchanged
    if sys.argv[2:4] == ["prepare", "begin"]:
        data = sys.stdin.buffer.read(16 << 20)
        if b"<hugepages" in data or b"<pagesize" in data:  # only hugepage guests need us
            sys.stderr.write(f"hugexml: cannot load hugexml ({type(exc).__name__}: {exc}); "
                             "hugepage guests cannot start until it is repaired\\n")
            code = 1
else:
@RUN@try:
    sys.stdout.flush()
    sys.stderr.flush()
except BaseException:  # a closed pipe must not turn exit 0 into 120
    pass
os._exit(code)
"""


def _guarded(header: str, entry: str, run: str) -> str:
    return (_GUARDED.replace("@HEAD@", header).replace("@ENTRY@", entry)
            .replace("@RUN@", run))


HOOK_BODY = _guarded(
    """\
# hugexml: libvirt qemu hook. `hugexml install-hook` installs this file with the interpreter
# above replaced by an absolute path (never a pyenv shim: it costs ~75 ms per guest event).
""",
    "main",
    """\
    code = main(sys.argv, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
""")

LEGACY_BODY = _guarded(
    """\
# hugexml: legacy single-file libvirt qemu hook. Runs the admin's previous hook (kept next to
# this file as qemu.hugexml-orig) first, then hugexml. Installed by `hugexml install-hook --legacy`.
""",
    "chain",
    """\
    ORIGINAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "qemu.hugexml-orig")
    code = chain(sys.argv, sys.stdin.buffer, sys.stdout.buffer, sys.stderr, ORIGINAL)
""")


def render(body: str, python: str, sys_path: Optional[str] = None) -> str:
    """The file text: shebang, marker with the checksum of everything else, body."""
    if sys_path:
        body = body.replace("\nimport sys\n", f"\nimport sys\n\nsys.path.insert(0, {sys_path!r})\n",
                            1)
    rest = f"#!{python} -I\n{body}"
    return _with_marker(rest)


def _with_marker(rest: str) -> str:
    digest = hashlib.sha256(rest.encode()).hexdigest()
    shebang, _, body = rest.partition("\n")
    return f"{shebang}\n{MARKER}{digest}\n{body}"


def ownership(path: str) -> Optional[str]:
    """None: not ours (or absent); 'intact': ours, unedited; 'edited': ours, changed since;
    'packaged': hooks/qemu as the RPM installs it (no marker: the package owns that file)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 20)
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc
    lines = text.split("\n")
    if text.startswith("#!") and text.partition("\n")[2] == HOOK_BODY:
        return "packaged"
    if len(lines) < 2 or not lines[1].startswith(MARKER):
        return None
    digest = lines[1][len(MARKER):].strip()
    rest = "\n".join(lines[:1] + lines[2:])
    return "intact" if hashlib.sha256(rest.encode()).hexdigest() == digest else "edited"


# --- the interpreter -----------------------------------------------------------------
def _is_script(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"#!"


def resolve_python(python: Optional[str]) -> tuple[str, list[str]]:
    """An absolute interpreter that is a binary, not a shim. Returns (path, notes)."""
    notes: list[str] = []
    path = python or sys.executable
    if not path:
        raise InvalidInput(reason="cannot tell which Python runs hugexml: pass --python PATH")
    path = os.path.abspath(path)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise InvalidInput(reason=f"--python {path}: not an executable file")
    if _is_script(path) or "/shims/" in path:
        real = _run_python(path, ["-c", "import sys; print(sys.executable)"]).stdout.strip()
        if not real or _is_script(real):
            raise InvalidInput(reason=f"--python {path} is a wrapper script (a pyenv shim?) "
                                      "and does not name its interpreter; pass the real one")
        notes.append(f"{path} is a wrapper script; using the interpreter it runs, {real}")
        path = real
    return path, notes


def _run_python(python: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([python, "-I", *args], capture_output=True, text=True,
                              timeout=60, check=False, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as exc:
        raise InvalidInput(reason=f"cannot run {python}: {exc}") from exc


def import_path_for(python: str) -> Optional[str]:
    """None when ``python -I`` imports hugexml and its dependencies as installed; else the
    directory to put on sys.path in the hook. Fails when neither works."""
    probe = "import hugexml.hook, lxml.etree"
    if _run_python(python, ["-c", probe]).returncode == 0:
        return None
    import hugexml

    here = os.path.dirname(os.path.dirname(os.path.abspath(hugexml.__file__)))
    proc = _run_python(python, ["-c", f"import sys; sys.path.insert(0, {here!r}); {probe}"])
    if proc.returncode == 0:
        return here
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise InvalidInput(reason=f"{python} cannot import hugexml and lxml ({last}); "
                              "install them for that interpreter or pass --python")


# --- files ---------------------------------------------------------------------------
def _write_atomic(path: str, text: str, mode: int = 0o755) -> None:
    from hugexml.core.fsutil import write_atomic

    try:
        write_atomic(path, text.encode(), mode=mode, make_dirs=True)
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc


def _rename(src: str, dst: str) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        raise HostError(path=src, reason=f"cannot rename to {dst}: {exc.strerror}") from exc


def _remove_ours(path: str, force: bool) -> bool:
    state = ownership(path)
    if state is None:
        return False
    if state == "packaged":
        raise InvalidInput(reason=f"{path} belongs to the hugexml package; remove the package "
                                  "(or the file) instead")
    if state == "edited" and not force:
        raise InvalidInput(reason=f"{path} was edited since hugexml installed it; "
                                  "left in place (use --force to remove it anyway)")
    try:
        os.unlink(path)
    except OSError as exc:
        raise HostError(path=path, reason=exc.strerror or str(exc)) from exc
    return True


def _uninstall_legacy(root: HostRoot, force: bool) -> list[str]:
    path, original = root.path(LEGACY), root.path(LEGACY) + ORIGINAL_SUFFIX
    done: list[str] = []
    if _remove_ours(path, force):
        done.append(f"removed {path}")
        if os.path.lexists(original):
            _rename(original, path)
            done.append(f"restored the admin hook {path} (from {original})")
    return done


# --- the daemon ----------------------------------------------------------------------
def running_daemons(root: HostRoot) -> list[dict[str, Any]]:
    """libvirt daemons in root/proc with their start time (epoch seconds), found the way
    the hook finds them (hugexml.system.daemon)."""
    from hugexml.system.daemon import find_daemons

    return [d.to_json() for d in sorted(find_daemons(root), key=lambda d: d.pid)]


def restart_advice(root: HostRoot, hook_path: str) -> tuple[bool, list[dict[str, Any]]]:
    """(restart needed, daemons): libvirt discovers hooks only when its daemon starts."""
    try:
        installed = os.stat(hook_path).st_mtime
    except OSError:
        installed = float("inf")
    daemons = running_daemons(root)
    for daemon in daemons:
        daemon["started_before_hook"] = daemon["started"] < installed
    return any(d["started_before_hook"] for d in daemons), daemons


# --- install / uninstall -------------------------------------------------------------
def install_hook(root: HostRoot, legacy: bool = False,
                 python: Optional[str] = None) -> dict[str, Any]:
    interpreter, notes = resolve_python(python)
    sys_path = import_path_for(interpreter)
    if sys_path:
        notes.append(f"{interpreter} does not import hugexml by itself: the hook adds "
                     f"{sys_path} to sys.path")
    target = root.path(LEGACY if legacy else DROPIN)
    text = render(LEGACY_BODY if legacy else HOOK_BODY, interpreter, sys_path)
    original = None
    if legacy:
        if _remove_ours(root.path(DROPIN), force=False):
            notes.append(f"removed the qemu.d hook {root.path(DROPIN)} (legacy replaces it)")
        if os.path.lexists(target) and ownership(target) is None:
            original = target + ORIGINAL_SUFFIX
            if os.path.lexists(original):
                raise InvalidInput(reason=f"{target} is not hugexml's and {original} exists "
                                          "already; move one of them away first")
            _rename(target, original)
            notes.append(f"kept the admin hook as {original}; it runs first")
        elif os.path.lexists(target + ORIGINAL_SUFFIX):
            original = target + ORIGINAL_SUFFIX
    else:
        notes.extend(_uninstall_legacy(root, force=False))
        state = ownership(target)
        if state == "packaged":
            notes.append(f"{target} is installed by the hugexml package; left as it is")
            text = _read(target) or text
            interpreter = text.split(None, 1)[0][2:]
        elif os.path.lexists(target) and state is None:
            raise InvalidInput(reason=f"{target} exists and is not hugexml's; move it away")
    changed = _read(target) != text
    if changed:
        _write_atomic(target, text)
    restart, daemons = restart_advice(root, target)
    return {"installed": target, "mode": "legacy" if legacy else "qemu.d",
            "python": interpreter, "sys_path": sys_path, "original": original,
            "changed": changed, "daemons": daemons, "restart_needed": restart, "notes": notes}


def uninstall_hook(root: HostRoot, force: bool = False) -> dict[str, Any]:
    removed: list[str] = []
    if _remove_ours(root.path(DROPIN), force):
        removed.append(f"removed {root.path(DROPIN)}")
    removed.extend(_uninstall_legacy(root, force))
    return {"removed": removed, "daemons": running_daemons(root) if removed else []}
