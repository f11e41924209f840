"""The Ansible role in packaging/ansible, run by ansible-core against this machine.

``ansible-playbook -i localhost, -c local``: a check-mode run that writes nothing, a real
run that installs hugexml with pip (no dnf here) from an sdist of this checkout into a
venv, writes the config, mounts and persists hugetlbfs and installs the hook, then the same
run again, which must change nothing. Under the real-host lock; everything the role
touched is put back afterwards (config, mounts and their directories, fstab or units,
hook, state dir, pools). The venv and the copy of the sdist live under tmp_path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REQUIRE_REAL = os.environ.get("HUGEXML_REQUIRE_REAL") == "1"
REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "packaging" / "ansible"
ROLE = ANSIBLE_DIR / "roles" / "hugexml"
# What the role may change on the host, restored byte for byte (absent ones removed).
WATCHED = ("/etc/hugexml", "/etc/libvirt/hooks", "/etc/fstab", "/run/hugexml",
           "/etc/systemd/system")
MOUNT_DIRS = ("/dev/hugepages", "/dev/hugepages1G", "/dev/hugepages2M")
RECAP = re.compile(r"^localhost\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)\s+skipped=(\d+)", re.M)

pytestmark = pytest.mark.realkernel


def hugetlbfs_mounts() -> set[str]:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return {line.split()[1] for line in fh if line.split()[2:3] == ["hugetlbfs"]}


def _playbook_bin() -> str:
    path = Path(sys.executable).parent / "ansible-playbook"
    if not path.exists():
        found = shutil.which("ansible-playbook")
        if found is None:
            if REQUIRE_REAL:
                pytest.fail("ansible-playbook not installed (setup.cfg's test extra has it)")
            pytest.skip("ansible-playbook not installed")
        return found
    return str(path)


def snapshot(paths: tuple[str, ...]) -> dict[str, dict[str, tuple[int, bytes | str]] | None]:
    """{path: None if absent, else {relative path: (mode, bytes, or a symlink's target)}}."""
    out: dict[str, dict[str, tuple[int, bytes | str]] | None] = {}
    for top in paths:
        if not os.path.lexists(top):
            out[top] = None
            continue
        tree: dict[str, tuple[int, bytes | str]] = {}
        entries = [top] if not os.path.isdir(top) else [
            os.path.join(d, n) for d, dirs, files in os.walk(top) for n in [*dirs, *files]]
        for path in entries:
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                tree[rel] = (st.st_mode, os.readlink(path))
            elif os.path.isfile(path):
                tree[rel] = (st.st_mode, Path(path).read_bytes())
            else:
                tree[rel] = (st.st_mode, b"")
        out[top] = tree
    return out


def restore(saved: dict[str, dict[str, tuple[int, bytes | str]] | None]) -> None:
    for top, tree in saved.items():
        if tree is None:
            if os.path.isdir(top) and not os.path.islink(top):
                shutil.rmtree(top)
            elif os.path.lexists(top):
                os.unlink(top)
            continue
        if not os.path.isdir(top):
            Path(top).write_bytes(tree["."][1])  # type: ignore[arg-type]
            os.chmod(top, tree["."][0] & 0o7777)
            continue
        for d, dirs, files in os.walk(top, topdown=False):
            for name in [*files, *dirs]:
                path = os.path.join(d, name)
                if os.path.relpath(path, top) not in tree:
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) \
                        else os.unlink(path)
        for rel, (mode, data) in sorted(tree.items()):
            path = os.path.join(top, rel)
            if isinstance(data, str):
                if not os.path.islink(path) or os.readlink(path) != data:
                    if os.path.lexists(path):
                        os.unlink(path)
                    os.symlink(data, path)
            elif os.path.isdir(path) or (mode & 0o170000) == 0o040000:
                os.makedirs(path, exist_ok=True)
            else:
                Path(path).write_bytes(data)
            if not isinstance(data, str):
                os.chmod(path, mode & 0o7777)


@pytest.fixture
def host_as_found(real_host):
    """Config, hook, fstab, units, state dir and mount points put back after the test;
    real_host puts back the pools and unmounts what the test mounted."""
    saved = snapshot(WATCHED)
    dirs = {d for d in MOUNT_DIRS if os.path.exists(d)}
    mounts = hugetlbfs_mounts()
    try:
        yield saved
    finally:
        for mount in sorted(hugetlbfs_mounts() - mounts, reverse=True):
            subprocess.run(["umount", mount], check=False)
        for d in MOUNT_DIRS:
            if d not in dirs and os.path.isdir(d) and not os.path.ismount(d):
                os.rmdir(d)
        restore(saved)
    assert snapshot(WATCHED) == saved, "the host is not as the test found it"


@pytest.fixture
def sdist(tmp_path) -> Path:
    out = tmp_path / "sdist"
    proc = subprocess.run([sys.executable, "-c", "import sys\n"
                           "from setuptools import build_meta\n"
                           "print(build_meta.build_sdist(sys.argv[1]))", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [path] = out.glob("hugexml-*.tar.gz")
    return path


def play(tmp_path: Path, extra: list[str]) -> tuple[dict[str, int], str]:
    """Runs the example playbook on this machine; returns its recap counts and output."""
    home = tmp_path / "ansible-home"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "ANSIBLE_HOME": str(home),
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"}
    argv = [_playbook_bin(), "-i", "localhost,", "-c", "local",
            "-e", "hugexml_hosts=localhost", "-e", "ansible_python_interpreter=/usr/bin/python3",
            "-e", f"hugexml_venv={tmp_path / 'venv'}",
            "-e", f"hugexml_cache_dir={tmp_path / 'cache'}",
            *extra, str(ANSIBLE_DIR / "playbook.yml")]
    proc = subprocess.run(argv, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    m = RECAP.search(out)
    assert m, out[-4000:]
    counts = dict(zip(("ok", "changed", "unreachable", "failed", "skipped"),
                      map(int, m.groups())))
    assert proc.returncode == 0 and counts["failed"] == 0, out[-4000:]
    return counts, out


def changed_tasks(out: str) -> list[str]:
    return re.findall(r"^TASK \[hugexml : ([^\]]+)\] \*+\nchanged:", out, re.M)


def test_role_check_real_and_idempotent_runs(host_as_found, sdist, tmp_path):
    for path in ("/etc/hugexml", "/etc/libvirt/hooks/qemu.d/hugexml"):
        assert not os.path.lexists(path), f"{path} exists: the host is not as CI finds it"
    report = tmp_path / "report"
    report.mkdir()
    common = ["-e", f"hugexml_pip_source={sdist}", "-e", f"hugexml_report_dir={report}"]

    # 1. Check mode: says what it would change, writes nothing.
    counts, out = play(tmp_path, [*common, "--check"])
    assert changed_tasks(out) == [
        "Cache directory for the hugexml distribution",
        "Copy the hugexml sdist or wheel to the host",
        "Install hugexml into " + str(tmp_path / "venv"), "Configuration directory",
        "Configuration file from hugexml_config"], out[-4000:]
    assert counts["changed"] == 5
    assert snapshot(WATCHED) == host_as_found and not (tmp_path / "venv").exists()

    # 2. The real run.
    counts, out = play(tmp_path, common)
    assert counts["changed"] == 7, changed_tasks(out)
    hugexml = tmp_path / "venv" / "bin" / "hugexml"
    assert hugexml.exists()
    from hugexml.core.config import Config, load_config

    assert load_config("/etc/hugexml/hugexml.conf", explicit=True) == Config()
    hook = Path("/etc/libvirt/hooks/qemu.d/hugexml").read_text().splitlines()[0]
    assert hook == f"#!{tmp_path / 'venv' / 'bin' / 'python3'} -I"
    sizes = {int(p.name.split("-")[1][:-2]) for p in Path("/sys/kernel/mm/hugepages").iterdir()}
    mounted = {m["page_size_kib"] for m in json.loads(subprocess.run(
        [str(hugexml), "mounts", "--json"], capture_output=True, text=True, check=True).stdout
        )["mounts"]}
    assert mounted == sizes
    facts = json.loads((report / "localhost.json").read_text())
    checks = {c["name"]: c["status"] for c in facts["doctor"]["checks"]}
    assert checks["hook"] == "ok" and checks["mounts"] == "ok", checks
    assert {p["size_kib"] for p in facts["status"]["pools"]} == sizes
    # No libvirt daemon runs here (and no systemd): nothing to restart, nothing restarted.
    assert facts["restart"]["done"] is False and facts["restart"]["needed"] is False

    # 3. Again, with a restart allowed: nothing changes.
    counts, out = play(tmp_path, [*common, "-e", "hugexml_restart_libvirt=true"])
    assert counts["changed"] == 0, changed_tasks(out)
    assert json.loads((report / "localhost.json").read_text())["restart"]["reason"] == (
        "nothing new for the daemon to discover")


def test_role_defaults_hold_every_config_key():
    """hugexml_config's defaults name every key hugexml.core.config knows, with its default."""
    import yaml

    from hugexml.core.config import _KEYS, Config, parse_config

    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())["hugexml_config"]
    assert {(s, k) for s, keys in defaults.items() for k in keys} == set(_KEYS)
    text = "".join(f"[{s}]\n" + "".join(
        f"{k} = {('yes' if v else 'no') if isinstance(v, bool) else v}\n" for k, v in keys.items())
        for s, keys in defaults.items())
    assert parse_config(text) == Config()
    playbook = yaml.safe_load((ANSIBLE_DIR / "playbook.yml").read_text())
    assert playbook[0]["vars"]["hugexml_config"] == defaults


@pytest.mark.parametrize(("allowed", "reason"), [
    (False, "hugexml_restart_libvirt is false"),
    (True, "no systemd: restart the libvirt daemon by hand (pid file /run/libvirtd.pid)"),
])
def test_restart_decision_without_systemd(tmp_path, allowed, reason):
    """A daemon that needs a restart (install-hook said so) on this machine, which has no
    systemd: never restarted, and the reason is in hugexml_restart. Read-only."""
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here: this case is for hosts without it")
    out = tmp_path / "restart.json"
    (tmp_path / "play.yml").write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "vars": {"_hugexml_bin": str(Path(sys.executable).parent / "hugexml"),
                 "_hugexml_hook": {"changed": True, "stdout": '{"restart_needed": true}'},
                 "hugexml_restart_libvirt": allowed,
                 "hugexml_restart_with_guests": False,
                 "hugexml_libvirt_units": ["libvirtd.service"]},
        "tasks": [{"ansible.builtin.include_role": {"name": "hugexml", "tasks_from": "restart"}},
                  {"ansible.builtin.copy": {"content": "{{ hugexml_restart | to_json }}",
                                            "dest": str(out)}, "changed_when": False}],
    }]))
    home = tmp_path / "ansible-home"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "ANSIBLE_HOME": str(home),
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles")}
    proc = subprocess.run([_playbook_bin(), "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=/usr/bin/python3",
                           str(tmp_path / "play.yml")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    m = RECAP.search(proc.stdout)
    assert m and m.group(2) == "0", proc.stdout[-3000:]  # changed=0: nothing restarted
    decided = json.loads(out.read_text())
    assert isinstance(decided.pop("guests"), list)  # qemu guests of other sessions may run
    assert decided == {"needed": True, "done": False, "reason": reason, "units": []}
    assert f"not done: {reason}" in proc.stdout
