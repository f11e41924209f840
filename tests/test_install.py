"""install-hook / uninstall-hook on a temporary root: files, marker, modes, legacy chaining,
interpreter checks, restart advice. The installed hooks are really executed."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from allocfix import skip_or_fail

from hugexml.core.errors import InvalidInput
from hugexml.core.root import HostRoot
from hugexml.qemuhook import install

REPO = Path(__file__).resolve().parents[1]
PLAIN_XML = b"<domain type='kvm'><name>vm1</name><memory unit='MiB'>64</memory></domain>\n"


@pytest.fixture
def root(tmp_path: Path) -> HostRoot:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    return HostRoot(str(tmp_path))


def dropin(root: HostRoot) -> Path:
    return Path(root.path(install.DROPIN))


def legacy(root: HostRoot) -> Path:
    return Path(root.path(install.LEGACY))


def run_hook(path: Path, *args: str, data: bytes = PLAIN_XML) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/root"}  # what libvirt passes
    return subprocess.run([str(path), *args], input=data, capture_output=True, env=env,
                          timeout=60, check=False)


def test_hooks_qemu_is_the_template_with_the_placeholder_interpreter():
    text = (REPO / "hooks" / "qemu").read_text()
    assert text == f"#!{install.PLACEHOLDER_PYTHON} -I\n{install.HOOK_BODY}"
    assert os.access(REPO / "hooks" / "qemu", os.X_OK)


def test_install_writes_an_executable_marked_hook_that_runs(root):
    result = install.install_hook(root)
    path = dropin(root)
    assert result["installed"] == str(path) and result["changed"] and result["mode"] == "qemu.d"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    first = path.read_text().splitlines()[0]
    assert first == f"#!{sys.executable} -I"
    assert install.ownership(str(path)) == "intact"
    assert not list(path.parent.glob(".*.tmp"))
    proc = run_hook(path, "vm1", "start", "begin", "-")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    proc = run_hook(path, "vm1", "restore", "begin", "-")
    assert proc.returncode == 0 and proc.stdout == PLAIN_XML


def test_install_is_idempotent(root):
    install.install_hook(root)
    before = dropin(root).stat()
    again = install.install_hook(root)
    assert again["changed"] is False
    assert dropin(root).stat().st_mtime_ns == before.st_mtime_ns


def test_uninstall_removes_only_an_intact_hook_of_ours(root):
    install.install_hook(root)
    assert install.uninstall_hook(root)["removed"] == [f"removed {dropin(root)}"]
    assert not dropin(root).exists()
    assert install.uninstall_hook(root)["removed"] == []


def test_uninstall_refuses_an_edited_hook_unless_forced(root):
    install.install_hook(root)
    path = dropin(root)
    path.write_text(path.read_text() + "# admin was here\n")
    assert install.ownership(str(path)) == "edited"
    with pytest.raises(InvalidInput, match="was edited since hugexml installed it"):
        install.uninstall_hook(root)
    assert path.exists()
    install.uninstall_hook(root, force=True)
    assert not path.exists()


def test_a_foreign_file_is_never_replaced_or_removed(root):
    path = dropin(root)
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(InvalidInput, match="is not hugexml's"):
        install.install_hook(root)
    assert install.uninstall_hook(root)["removed"] == []
    assert path.read_text() == "#!/bin/sh\nexit 0\n"


def test_the_packaged_hook_is_recognised_and_left_to_the_package(root):
    path = dropin(root)
    path.parent.mkdir(parents=True)
    packaged = f"#!/usr/bin/python3 -I\n{install.HOOK_BODY}"   # what the spec's sed leaves
    path.write_text(packaged)
    assert install.ownership(str(path)) == "packaged"
    result = install.install_hook(root)
    assert result["changed"] is False and result["python"] == "/usr/bin/python3"
    assert any("installed by the hugexml package" in n for n in result["notes"])
    with pytest.raises(InvalidInput, match="belongs to the hugexml package"):
        install.uninstall_hook(root)
    assert path.read_text() == packaged


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("os._exit", "os._exit ", 1),          # body
    lambda t: t.replace(" -I\n", "\n", 1),                   # shebang
    lambda t: t + "\n",                                       # trailing text
])
def test_marker_checksum_covers_everything_but_itself(tmp_path, edit):
    text = install.render(install.HOOK_BODY, "/usr/bin/python3")
    assert text.split("\n")[1].startswith(install.MARKER)
    path = tmp_path / "hook"
    path.write_text(text)
    assert install.ownership(str(path)) == "intact"
    path.write_text(edit(text))
    assert install.ownership(str(path)) == "edited"


def test_wrapper_script_interpreter_is_resolved(tmp_path, root):
    shim = tmp_path / "shims" / "python3"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)
    result = install.install_hook(root, python=str(shim))
    real = subprocess.run([sys.executable, "-c", "import sys; print(sys.executable)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert result["python"] == real
    assert any("wrapper script" in n for n in result["notes"])
    assert dropin(root).read_text().startswith(f"#!{real} -I\n")


def test_not_executable_interpreter_is_refused(tmp_path, root):
    with pytest.raises(InvalidInput, match="not an executable file"):
        install.install_hook(root, python=str(tmp_path / "nope"))
    assert not dropin(root).exists()


def _python_without(module: str, candidates: list[str]) -> str | None:
    for python in candidates:
        if os.access(python, os.X_OK) and subprocess.run(
                [python, "-I", "-c", f"import {module}"], capture_output=True,
                check=False).returncode != 0:
            return python
    return None


def test_interpreter_without_hugexml_gets_a_sys_path_line_and_works(root):
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK) or subprocess.run(
            [python, "-I", "-c", "import lxml.etree"], capture_output=True,
            check=False).returncode != 0:
        skip_or_fail("needs a system python3 with lxml (Debian: python3-lxml)")
    if _python_without("hugexml", [python]) is None:
        pytest.skip("the system python3 imports hugexml by itself")
    result = install.install_hook(root, python=python)
    assert result["sys_path"] == str(REPO)
    assert f"sys.path.insert(0, {str(REPO)!r})" in dropin(root).read_text()
    proc = run_hook(dropin(root), "vm1", "restore", "begin", "-")
    assert proc.returncode == 0 and proc.stdout == PLAIN_XML, proc.stderr


def test_interpreter_that_cannot_import_dependencies_is_refused(root):
    python = _python_without("lxml", ["/root/.pyenv/versions/3.9.18/bin/python3.9",
                                      "/usr/bin/python3"])
    if python is None:
        skip_or_fail("no interpreter without lxml on this machine")
    with pytest.raises(InvalidInput, match="cannot import hugexml and lxml"):
        install.install_hook(root, python=python)
    assert not dropin(root).exists()


# --- legacy ------------------------------------------------------------------------------
ADMIN_HOOK = """#!/bin/sh
# the admin's own hook: records its calls, can fail, rewrites XML on restore
log="$(dirname "$0")/admin.log"
xml=$(cat)
echo "$* $(printf %s "$xml" | wc -c)" >> "$log"
[ "$2" = prepare ] && [ -e "$(dirname "$0")/admin.fail" ] && { echo "admin says no" >&2; exit 3; }
[ "$2" = restore ] && { printf %s "$xml" | sed 's/<name>vm1</<name>vm1<!--admin--></'; }
exit 0
"""


@pytest.fixture
def admin_hook(root) -> Path:
    path = legacy(root)
    path.parent.mkdir(parents=True)
    path.write_text(ADMIN_HOOK)
    path.chmod(0o750)
    return path


def test_legacy_keeps_the_admin_hook_and_runs_it_first(root, admin_hook):
    result = install.install_hook(root, legacy=True)
    original = Path(str(admin_hook) + install.ORIGINAL_SUFFIX)
    assert result["original"] == str(original) and original.read_text() == ADMIN_HOOK
    assert install.ownership(str(admin_hook)) == "intact"
    log = admin_hook.parent / "admin.log"

    proc = run_hook(admin_hook, "vm1", "start", "begin", "-")
    assert proc.returncode == 0
    assert log.read_text() == f"vm1 start begin - {len(PLAIN_XML.strip())}\n"

    # restore: the admin's rewrite is what hugexml filters (no hugepages: passes through)
    proc = run_hook(admin_hook, "vm1", "restore", "begin", "-")
    assert proc.returncode == 0
    assert proc.stdout == PLAIN_XML.strip().replace(b"<name>vm1<", b"<name>vm1<!--admin--><")

    # the admin hook's failure fails the start with its exit code and its stderr
    (admin_hook.parent / "admin.fail").write_text("")
    proc = run_hook(admin_hook, "vm1", "prepare", "begin", "-")
    assert proc.returncode == 3 and proc.stderr == b"admin says no\n"


def test_legacy_uninstall_restores_the_admin_hook(root, admin_hook):
    mode = admin_hook.stat().st_mode
    install.install_hook(root, legacy=True)
    assert install.install_hook(root, legacy=True)["changed"] is False
    result = install.uninstall_hook(root)
    assert admin_hook.read_text() == ADMIN_HOOK and admin_hook.stat().st_mode == mode
    assert not Path(str(admin_hook) + install.ORIGINAL_SUFFIX).exists()
    assert len(result["removed"]) == 2


def test_legacy_without_admin_hook_runs_hugexml_alone(root):
    install.install_hook(root, legacy=True)
    proc = run_hook(legacy(root), "vm1", "restore", "begin", "-")
    assert proc.returncode == 0 and proc.stdout == PLAIN_XML
    install.uninstall_hook(root)
    assert not legacy(root).exists()


def test_switching_modes_leaves_exactly_one_hook(root, admin_hook):
    install.install_hook(root, legacy=True)
    result = install.install_hook(root)
    assert admin_hook.read_text() == ADMIN_HOOK  # the admin's hook is back in place
    assert dropin(root).exists() and result["notes"]
    install.install_hook(root, legacy=True)
    assert not dropin(root).exists()


def test_legacy_refuses_when_an_older_original_is_in_the_way(root, admin_hook):
    Path(str(admin_hook) + install.ORIGINAL_SUFFIX).write_text("#!/bin/sh\n")
    with pytest.raises(InvalidInput, match="move one of them away"):
        install.install_hook(root, legacy=True)
    assert admin_hook.read_text() == ADMIN_HOOK


# --- restart advice ----------------------------------------------------------------------
def fake_daemon(root: HostRoot, pid: int, comm: str, start_ticks: int,
                state: str = "S") -> None:
    d = Path(root.path("proc", str(pid)))
    d.mkdir(parents=True)
    fields = [state] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 20
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")


def test_restart_needed_for_a_daemon_older_than_the_hook(root):
    ticks = os.sysconf("SC_CLK_TCK")
    fake_daemon(root, 4242, "libvirtd", start_ticks=10 * ticks)   # started at btime + 10 s
    fake_daemon(root, 4343, "bash", start_ticks=10 * ticks)
    result = install.install_hook(root)
    assert result["restart_needed"] is True
    assert [(d["pid"], d["name"]) for d in result["daemons"]] == [(4242, "libvirtd")]
    assert result["daemons"][0]["started"] == 1700000010


def test_a_stopped_daemon_not_yet_reaped_needs_no_restart(root):
    """A zombie libvirtd (stopped, its parent has not reaped it: seen for seconds here,
    where PID 1 reaps slowly) runs no hooks."""
    fake_daemon(root, 4242, "libvirtd", start_ticks=1, state="Z")
    result = install.install_hook(root)
    assert (result["restart_needed"], result["daemons"]) == (False, [])


def test_no_restart_for_a_daemon_started_after_the_hook(root):
    install.install_hook(root)
    future_ticks = int((dropin(root).stat().st_mtime - 1700000000 + 60) * os.sysconf("SC_CLK_TCK"))
    fake_daemon(root, 77, "virtqemud", start_ticks=future_ticks)
    result = install.install_hook(root)
    assert result["restart_needed"] is False and result["daemons"][0]["name"] == "virtqemud"


# --- the commands ------------------------------------------------------------------------
def ctx_for(root: HostRoot):
    from hugexml.cli.main import Context

    return Context(root=root, state_dir="/nonexistent", config_path="/nonexistent",
                   config_explicit=False, verbose=0)


def test_install_and_uninstall_commands_json(root, capsys):
    from hugexml.cli import install_hook, uninstall_hook

    ticks = os.sysconf("SC_CLK_TCK")
    fake_daemon(root, 4242, "libvirtd", start_ticks=ticks)
    args = argparse.Namespace(legacy=False, python=None, json=True)
    assert install_hook.run(args, ctx_for(root)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["installed"] == str(dropin(root)) and out["restart_needed"] is True

    args = argparse.Namespace(legacy=False, python=None, json=False)
    assert install_hook.run(args, ctx_for(root)) == 0
    text = capsys.readouterr().out
    assert text.startswith("already installed: ")
    assert "restart libvirtd (pid 4242)" in text

    assert uninstall_hook.run(argparse.Namespace(force=False, json=True), ctx_for(root)) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [f"removed {dropin(root)}"]
    assert uninstall_hook.run(argparse.Namespace(force=False, json=False), ctx_for(root)) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_install_command_says_when_no_daemon_runs(root, capsys):
    from hugexml.cli import install_hook

    install_hook.run(argparse.Namespace(legacy=False, python=None, json=False), ctx_for(root))
    assert "no libvirt daemon is running" in capsys.readouterr().out


def test_installed_tree_is_self_contained(root, tmp_path):
    """The hook file does not depend on the checkout it was installed from being the cwd."""
    install.install_hook(root)
    copy = tmp_path / "elsewhere"
    shutil.copy(dropin(root), copy)
    proc = subprocess.run([str(copy), "vm1", "stopped", "end", "-"], cwd="/",
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0


# --- --root before or after the command (issue 4: ``install-hook [--root DIR] [--legacy]``) ---
@pytest.fixture
def decoy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where an ignored --root would land instead of the real /etc (env HUGEXML_ROOT)."""
    base = tmp_path / "decoy"
    (base / "proc").mkdir(parents=True)
    (base / "proc" / "stat").write_text("cpu  1 2 3\nbtime 1700000000\n")
    monkeypatch.setenv("HUGEXML_ROOT", str(base))
    return base


def etc_files(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in (base / "etc").rglob("*")) \
        if (base / "etc").exists() else []


@pytest.mark.parametrize("legacy_mode", [False, True], ids=["dropin", "legacy"])
@pytest.mark.parametrize("where", ["global", "after-command"])
def test_cli_root_before_or_after_the_command(root, decoy, capsys, where, legacy_mode):
    from hugexml.cli.main import main

    def argv(command: str, *opts: str) -> list[str]:
        if where == "global":
            return ["--root", root.base, command, *opts]
        return [command, "--root", root.base, *opts]

    target = legacy(root) if legacy_mode else dropin(root)
    assert main(argv("install-hook", *(["--legacy"] if legacy_mode else []), "--json")) == 0
    assert json.loads(capsys.readouterr().out)["installed"] == str(target)
    assert target.is_file() and os.access(target, os.X_OK)
    assert main(argv("uninstall-hook", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [f"removed {target}"]
    assert not target.exists()
    assert etc_files(decoy) == []


def test_the_commands_root_wins_over_the_global_one(root, decoy, capsys):
    from hugexml.cli.main import build_parser, main

    assert main(["--root", str(decoy), "install-hook", "--root", root.base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["installed"] == str(dropin(root))
    assert etc_files(decoy) == []
    assert main(["--root", str(decoy), "uninstall-hook", "--root", root.base]) == 0
    assert capsys.readouterr().out.strip() == f"removed {dropin(root)}"
    # absent after the command, the global value is kept (argparse.SUPPRESS, not None)
    assert build_parser().parse_args(["--root", "/x", "install-hook"]).root == "/x"
    assert build_parser().parse_args(["--root", "/x", "uninstall-hook"]).root == "/x"


def test_run_uses_the_commands_root_over_ctx_root(root, decoy, capsys):
    """run() itself honours args.root, whatever root the context was built with."""
    from hugexml.cli import install_hook, uninstall_hook

    ctx = ctx_for(HostRoot(str(decoy)))
    args = argparse.Namespace(root=root.base, legacy=False, python=None, json=True)
    assert install_hook.run(args, ctx) == 0
    assert json.loads(capsys.readouterr().out)["installed"] == str(dropin(root))
    assert etc_files(decoy) == []
    args = argparse.Namespace(root=root.base, force=False, json=True)
    assert uninstall_hook.run(args, ctx) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [f"removed {dropin(root)}"]
