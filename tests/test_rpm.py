"""The RPM, end to end: packaging/build-rpm builds it from a fresh sdist, rpmlint finds no
errors, and it installs into a scratch root (``rpm -i --root --nodeps --noscripts``) where the
hook, the config, the units and the man page are, the hook runs on the system python3, the
package imports from the installed sitelib, and systemd accepts the units.

The man page and the bash completion are generated from the full argument parser
(``hugexml.cli.main.build_parser()``) by packaging/gen_docs.py and committed; a test fails when
either is stale, so they cannot drift from the CLI. The build needs rpmbuild (skipped
without it, a failure when HUGEXML_REQUIRE_REAL=1); none of this runs inside rpmbuild's own
%check. The build's %check
only collects the unit tests (they run in the same job anyway); HUGEXML_RPM_FULL_CHECK=1
runs them in full, as `packaging/build-rpm` does by default.
"""
from __future__ import annotations

import configparser
import glob
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"
SYSTEMD_DIR = PACKAGING / "systemd"
REQUIRE_REAL = os.environ.get("HUGEXML_REQUIRE_REAL") == "1"
IN_RPMBUILD = bool(os.environ.get("RPM_BUILD_ROOT"))
SYSTEM_PYTHON = "/usr/bin/python3"
HOOK = "/etc/libvirt/hooks/qemu.d/hugexml"
CONF = "/etc/hugexml/hugexml.conf"
UNITDIR = "/usr/lib/systemd/system"
BOOT_UNITS = ("dev-hugepages1G.mount", "dev-hugepages2M.mount", "hugexml-reserve.service")
TIMER_UNITS = ("hugexml-reconcile.service", "hugexml-reconcile.timer")
UNITS = (*BOOT_UNITS, *TIMER_UNITS)
DROPIN = "dev-hugepages.mount.d/hugexml.conf"
DAEMONS = ("libvirtd.service", "virtqemud.service")

# Fedora's own rpmlint configuration, vendored unchanged (packaging/rpmlint/README.md).
FEDORA_RPMLINT = PACKAGING / "rpmlint" / "fedora.toml"
FEDORA_RPMLINT_SHA256 = "9dfd3d6af3e607f78d4ff572470fb0a7c5dd2a020ab9d21cb6fa05cb5b68292e"
# rpmlint warnings allowed to stand under it (the test fails on any other), with the
# reason. Errors are never allowed.
JUSTIFIED_WARNINGS = {
    "no-manual-page-for-binary hugexml": (
        "rpmlint 2.4 bug: FilesCheck records each man page's section ('8') instead of its "
        "name, so every binary is reported; hugexml(8) is packaged, see test_file_list"),
    "invalid-license GPL-2.0-or-later": (
        "Fedora's configuration leaves ValidLicenses empty: Fedora's SPDX list comes from "
        "the rpmlint-fedora-license-data package, where GPL-2.0-or-later is allowed"),
}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} not installed"
        if REQUIRE_REAL:
            pytest.fail(f"RPM test cannot run: {reason}")
        pytest.skip(reason)
    return path


def _need_root() -> None:
    if os.geteuid() != 0:
        # rpm --root chroots for the transaction.
        if REQUIRE_REAL:
            pytest.fail("RPM install test needs root")
        pytest.skip("needs root (rpm --root chroots)")


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


# ---------------------------------------------------------------- build and install

def clean_clone(dest: Path) -> Path:
    """This checkout's files as a fresh clone has them: no .venv, no build output."""
    junk = shutil.ignore_patterns(".git", ".venv", "dist", "build", "*.egg-info", "__pycache__",
                                  ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis")
    shutil.copytree(REPO, dest, ignore=junk, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    """sdist, SRPM and RPM from packaging/build-rpm in a clean clone (no .venv), where the
    README's setup has run: %check runs the unit tests with the system python's pytest."""
    if IN_RPMBUILD:
        pytest.skip("inside rpmbuild's %check: no RPM build in the RPM build")
    _need("rpmbuild")
    out = tmp_path_factory.mktemp("rpms")
    clone = clean_clone(tmp_path_factory.mktemp("clone") / "hugexml")
    env = dict(os.environ)
    if os.environ.get("HUGEXML_RPM_FULL_CHECK") != "1":
        # The unit tests run in this same job already: %check only collects them, against
        # the package in the buildroot (every test module imports, the -m markers exist).
        env["PYTEST_ADDOPTS"] = (env.get("PYTEST_ADDOPTS", "") + " --collect-only").strip()
    proc = _run([str(clone / "packaging/build-rpm"), "--outdir", str(out)], cwd=clone, env=env)
    assert proc.returncode == 0, f"build-rpm failed:\n{proc.stderr[-6000:]}"
    # %check ran (it is no longer skipped quietly without a .venv).
    assert re.search(r"^\+ .*-m pytest tests ", proc.stderr, re.M), proc.stderr[-3000:]
    ran = re.search(r"\b\d+ tests? (collected|passed)|\d+ passed", proc.stderr)
    assert ran, proc.stderr[-3000:]
    paths = [Path(line) for line in proc.stdout.split()]
    found = {
        "sdist": [p for p in paths if p.name.endswith(".tar.gz")],
        "srpm": [p for p in paths if p.name.endswith(".src.rpm")],
        "rpm": [p for p in paths if p.name.endswith(".noarch.rpm")],
    }
    assert all(len(v) == 1 for v in found.values()), f"build-rpm printed {paths}"
    for p in paths:
        assert p.is_file() and p.parent == out
    return {k: v[0] for k, v in found.items()}


def test_build_without_pytest_fails_in_one_line(tmp_path):
    """Where %check truly cannot run, build-rpm says so in one line, unless --nocheck."""
    if IN_RPMBUILD:
        pytest.skip("inside rpmbuild's %check")
    _need("rpmbuild")
    bare = tmp_path / "bare"
    proc = _run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(bare)])
    assert proc.returncode == 0, proc.stderr
    clone = clean_clone(tmp_path / "clone")
    env = {**os.environ, "HUGEXML_RPM_PYTHON": str(bare / "bin/python3")}
    proc = _run([str(clone / "packaging/build-rpm"), "--outdir", str(tmp_path / "out")],
                cwd=clone, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"build-rpm: %check needs pytest and hypothesis for {bare}/bin/python3 (run "
        "scripts/setup) or a .venv; --nocheck builds without it"], proc.stderr
    assert not (tmp_path / "out").exists()


def rpm_db(root: Path) -> list[str]:
    return ["--root", str(root), "--dbpath", "/var/lib/rpm"]


@pytest.fixture(scope="session")
def installed(built, tmp_path_factory) -> Path:
    """A scratch root with the RPM installed as the issue says: no deps, no scriptlets."""
    _need_root()
    root = tmp_path_factory.mktemp("root")
    init = _run(["rpm", *rpm_db(root), "--initdb"])
    assert init.returncode == 0, init.stderr
    proc = _run(["rpm", "-i", *rpm_db(root), "--nodeps", "--noscripts", "--notriggers",
                 str(built["rpm"])])
    assert proc.returncode == 0, proc.stderr
    return root


def query(root: Path, fmt: str) -> list[str]:
    proc = _run(["rpm", "-q", *rpm_db(root), "--qf", fmt, "hugexml"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def sitelib(root: Path) -> Path:
    inits = [f for f in query(root, "[%{FILENAMES}\n]") if f.endswith("/hugexml/__init__.py")]
    assert len(inits) == 1, inits
    return root / inits[0].lstrip("/").rsplit("/hugexml/", 1)[0]


# ---------------------------------------------------------------- no build needed

def spec_field(name: str) -> str:
    m = re.search(rf"^{name}:\s*(\S+)", (PACKAGING / "hugexml.spec").read_text(), re.M)
    assert m, name
    return m.group(1)


def test_versions_agree():
    import hugexml

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    version = spec_field("Version")
    assert version == cfg["metadata"]["version"] == hugexml.__version__
    release = spec_field("Release").replace("%{?dist}", "")
    changelog = (PACKAGING / "hugexml.spec").read_text().split("%changelog", 1)[1]
    first = next(line for line in changelog.splitlines() if line.startswith("*"))
    assert first.endswith(f" - {version}-{release}"), first


def unit(name: str) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(strict=False, interpolation=None)
    cfg.optionxform = str  # type: ignore[assignment,method-assign]
    cfg.read(SYSTEMD_DIR / name)
    return cfg


@pytest.mark.parametrize("name", [*BOOT_UNITS, DROPIN])
def test_units_come_before_the_libvirt_daemons(name):
    before = unit(name)["Unit"]["Before"].split()
    assert set(DAEMONS) <= set(before)


@pytest.mark.parametrize(("name", "size", "where"), [
    ("dev-hugepages1G.mount", "1G", "/dev/hugepages1G"),
    ("dev-hugepages2M.mount", "2M", "/dev/hugepages2M"),
])
def test_mount_units(name, size, where):
    u = unit(name)
    assert u["Mount"]["What"] == "hugetlbfs" and u["Mount"]["Type"] == "hugetlbfs"
    assert u["Mount"]["Where"] == where
    assert f"pagesize={size}" in u["Mount"]["Options"].split(",")
    assert u["Unit"]["DefaultDependencies"] == "no"
    assert u["Install"]["WantedBy"] == "sysinit.target"


def test_reserve_service_runs_a_real_command():
    from hugexml.cli.main import build_parser

    u = unit("hugexml-reserve.service")
    assert u["Service"]["Type"] == "oneshot"
    assert u["Unit"]["DefaultDependencies"] == "no"
    assert u["Unit"]["ConditionPathExists"] == CONF
    argv = u["Service"]["ExecStart"].split()
    assert argv[0] == "/usr/bin/hugexml"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "boot" and args.apply_runtime


def test_reconcile_timer_runs_hugexml_reconcile():
    from hugexml.cli.main import build_parser

    service, timer = unit("hugexml-reconcile.service"), unit("hugexml-reconcile.timer")
    assert service["Service"]["Type"] == "oneshot"
    argv = service["Service"]["ExecStart"].split()
    assert argv[0] == "/usr/bin/hugexml" and build_parser().parse_args(argv[1:]).command \
        == "reconcile"
    assert timer["Timer"]["OnUnitActiveSec"] == "1min"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_preset_enables_the_mounts_and_the_reconcile_timer_only():
    lines = [ln.split() for ln in (SYSTEMD_DIR / "80-hugexml.preset").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert sorted(lines) == sorted([["enable", "dev-hugepages1G.mount"],
                                    ["enable", "dev-hugepages2M.mount"],
                                    ["disable", "hugexml-reserve.service"],
                                    ["enable", "hugexml-reconcile.timer"]])


def test_tmpfiles_line():
    lines = [ln for ln in (PACKAGING / "hugexml.tmpfiles").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert [ln.split() for ln in lines] == [["d", "/run/hugexml", "0755", "root", "root", "-"]]
    # the mode is kept: the spec's %ghost entry says the same
    spec = (PACKAGING / "hugexml.spec").read_text()
    assert "%ghost %dir %attr(0755,root,root) %{_rundir}/hugexml" in spec


def test_packaged_config_is_the_default_config():
    from hugexml.core.config import DEFAULT_CONFIG_TEXT

    assert (PACKAGING / "hugexml.conf").read_text() == DEFAULT_CONFIG_TEXT


# ---------------------------------------------------------------- man page

def man_source() -> str:
    """The man page with font escapes removed and \\- turned into -."""
    text = (PACKAGING / "hugexml.8").read_text()
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\&|\\c", "", text)
    return text.replace("\\-", "-").replace("\\(em", "--")


def parser_options():
    """{command: (option strings, subcommand names)} and the global options, from argparse."""
    import argparse

    from hugexml.cli.main import build_parser

    parser = build_parser()
    glob = [s for a in parser._actions for s in a.option_strings]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = {}
    for name, p in sub.choices.items():
        opts = [s for a in p._actions for s in a.option_strings]
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        subs = [n for a in nested for n in a.choices]
        # An action word as a positional with choices (hugexml mounts ensure).
        subs += [str(c) for a in p._actions
                 if not a.option_strings and a.choices and not isinstance(
                     a, argparse._SubParsersAction) for c in a.choices]
        for a in nested:
            for sp in a.choices.values():
                opts += [s for x in sp._actions for s in x.option_strings]
        commands[name] = (sorted(set(opts)), subs)
    return glob, commands


def test_man_page_renders_without_warnings():
    groff = _need("groff")
    proc = _run([groff, "-man", "-Tutf8", "-ww", "-z", str(PACKAGING / "hugexml.8")])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    if shutil.which("man"):
        proc = _run(["man", "-l", "--warnings=w", str(PACKAGING / "hugexml.8")],
                    env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert "hugexml install-hook" in proc.stdout


def load_gen_docs():
    """packaging/gen_docs.py, the generator of the man page and the completion."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_docs", PACKAGING / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["hugexml.8", "hugexml.bash-completion"])
def test_generated_file_is_fresh(name):
    """The committed man page and completion are what gen_docs.py makes from the parser
    now (the RPM build installs them as they are: it builds offline from the sdist)."""
    if IN_RPMBUILD:
        pytest.skip("inside rpmbuild's %check: the generators are build-time tools")
    gen = load_gen_docs()
    [make] = [f for path, f in gen.OUTPUTS.items() if path.name == name]
    assert (PACKAGING / name).read_text() == make(), (
        f"packaging/{name} is stale: run .venv/bin/python packaging/gen_docs.py")


def test_gen_docs_check_reports_a_stale_file(tmp_path, monkeypatch):
    if IN_RPMBUILD:
        pytest.skip("inside rpmbuild's %check: the generators are build-time tools")
    gen = load_gen_docs()
    stale = tmp_path / "hugexml.8"
    stale.write_text("old\n")
    monkeypatch.setattr(gen, "OUTPUTS", {stale: gen.OUTPUTS[gen.MANPAGE]})
    assert gen.main(["--check"]) == 1 and stale.read_text() == "old\n"
    assert gen.main([]) == 0 and stale.read_text() == gen.manpage()
    assert gen.main(["--check"]) == 0


def test_man_page_covers_every_command_and_option():
    text = man_source()
    glob, commands = parser_options()
    missing = [o for o in glob if o not in ("-h", "--help") and o not in text]
    for name, (opts, subs) in commands.items():
        if not re.search(rf"^\.SS .*\bhugexml {re.escape(name)}\b", text, re.M):
            missing.append(f".SS hugexml {name}")
        missing += [f"{name} {o}" for o in opts if o not in ("-h", "--help") and o not in text]
        missing += [f"{name} {s}" for s in subs if s not in text]
    assert not missing, f"man page lacks: {missing}"
    documented = set(re.findall(r"^\.SS hugexml ([a-z][a-z-]*)", text, re.M))
    assert documented == set(commands), "man page sections for commands the CLI lacks"
    from hugexml.cli.main import COMMANDS

    assert set(commands) == set(COMMANDS), "build_parser() must build every command"


def shipped_config_defaults() -> dict[str, dict[str, str]]:
    """{section: {key: default}} from the default config text, where every key is commented."""
    from hugexml.core.config import DEFAULT_CONFIG_TEXT

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(re.sub(r"^#\s?(?=\w+\s*=)", "", DEFAULT_CONFIG_TEXT, flags=re.M))
    return {section: dict(cfg[section]) for section in cfg.sections()}


def test_man_page_covers_every_config_key_and_the_hook():
    text = man_source()
    defaults = shipped_config_defaults()
    assert defaults and all(defaults.values())
    for section, keys in defaults.items():
        assert re.search(rf"^\.SS \[{section}\]$", text, re.M), section
        for key, value in keys.items():
            line = rf"^\.B {key} =" + (f" {re.escape(value)}" if value else "") + r"\s*$"
            assert re.search(line, text, re.M), f"[{section}] {key} = {value}"
    for op in ("prepare begin", "started begin", "release end", "migrate begin",
               "restore begin", "reconnect begin"):
        assert op in text, op
    for path in (HOOK, CONF, "/run/hugexml", "dev-hugepages1G.mount", "hugexml-reserve.service"):
        assert path in text, path


# ---------------------------------------------------------------- bash completion

def complete(words: list[str]) -> list[str]:
    """COMPREPLY of the completion function for the command line ``words`` (cursor last)."""
    bash = _need("bash")
    script = (f"source {PACKAGING / 'hugexml.bash-completion'}\n"
              "COMP_WORDS=(\"$@\"); COMP_CWORD=$(( $# - 1 ))\n"
              "COMP_LINE=\"$*\"; COMP_POINT=${#COMP_LINE}\n"
              "fn=$(complete -p hugexml | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')\n"
              "$fn hugexml \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    proc = _run([bash, "--norc", "--noprofile", "-c", script, "bash", *words])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_completion_syntax():
    proc = _run([_need("bash"), "-n", str(PACKAGING / "hugexml.bash-completion")])
    assert proc.returncode == 0, proc.stderr


def test_completion_offers_every_command_and_option():
    glob, commands = parser_options()
    assert sorted(complete(["hugexml", ""])) == sorted(commands)
    assert set(complete(["hugexml", "--"])) >= {o for o in glob if o.startswith("--")}
    assert complete(["hugexml", "--config", "/etc/x", "sta"]) == ["status"]
    for name, (opts, subs) in commands.items():
        offered = set(complete(["hugexml", name, "-"]))
        want = {o for o in opts if o not in ("-h",)}
        assert want <= offered, f"{name}: completion lacks {sorted(want - offered)}"
        if subs:
            assert set(subs) <= set(complete(["hugexml", name, ""])), name


# ---------------------------------------------------------------- the built packages

def test_rpmlint_config_is_fedoras_unchanged():
    import hashlib

    assert hashlib.sha256(FEDORA_RPMLINT.read_bytes()).hexdigest() == FEDORA_RPMLINT_SHA256
    # No configuration of our own: no filters Fedora's lacks.
    assert sorted(p.name for p in PACKAGING.rglob("*rpmlint*") if p.is_file()) == []
    assert sorted(p.name for p in (PACKAGING / "rpmlint").iterdir()) == ["README.md",
                                                                        "fedora.toml"]


def test_rpmlint_fedora_config_reports_no_errors(built):
    rpmlint = _need("rpmlint")
    _need("checkbashisms")  # Fedora's config enables BashismsCheck, which runs it
    proc = _run([rpmlint, "-c", str(FEDORA_RPMLINT), str(PACKAGING / "hugexml.spec"),
                 str(built["srpm"]), str(built["rpm"])])
    assert "fedora.toml" in proc.stdout and "BashismsCheck" not in proc.stderr, proc.stderr
    findings = re.findall(r"^\S+: ([EW]): (.+?)\s*$", proc.stdout, re.M)
    print(proc.stdout)
    errors = [msg for level, msg in findings if level == "E"]
    unjustified = [msg for level, msg in findings
                   if level == "W" and msg not in JUSTIFIED_WARNINGS]
    assert not errors, errors
    assert not unjustified, f"warnings without a justification: {unjustified}"
    assert re.search(r"\b0 errors\b", proc.stdout), proc.stdout


def test_srpm_is_spec_plus_sdist(built):
    proc = _run(["rpm", "-qpl", str(built["srpm"])])
    assert sorted(proc.stdout.split()) == sorted(["hugexml.spec", built["sdist"].name])
    with tarfile.open(built["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for need in ("hooks/qemu", "packaging/hugexml.spec", "packaging/hugexml.8",
                 "packaging/hugexml.8.in", "packaging/gen_docs.py",
                 "packaging/hugexml-completers.bash", "packaging/grafana/hugexml.json",
                 "packaging/hugexml.conf", "packaging/hugexml.bash-completion",
                 "packaging/hugexml.tmpfiles", "packaging/systemd/" + DROPIN,
                 "tests/conftest.py", "tests/test_rpm.py", "README.md", "setup.cfg",
                 "LICENSE", "hugexml/hook.py", "hugexml/qemuhook/dispatch.py",
                 "hugexml/cli/__init__.py", "hugexml/cli/plan.py"):
        assert need in names, need
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_rpm_requires(built):
    proc = _run(["rpm", "-qpR", str(built["rpm"])])
    requires = {line.strip() for line in proc.stdout.splitlines()}
    for need in ("python3-lxml", "python3-psutil", "python3-libvirt",
                 "(libvirt-daemon-driver-qemu or libvirt-daemon-kvm)", SYSTEM_PYTHON):
        assert need in requires, need
    # Metrics are optional: recommended, never required (the hook does not import them).
    assert not [r for r in requires if "prometheus" in r]
    proc = _run(["rpm", "-qp", "--recommends", str(built["rpm"])])
    assert proc.stdout.split() == ["python3-prometheus_client"]
    arch = _run(["rpm", "-qp", "--qf", "%{ARCH}", str(built["rpm"])]).stdout
    assert arch == "noarch"


def test_file_list(installed):
    files = {}
    for line in query(installed, "[%{FILEMODES:perms} %{FILEFLAGS:fflags} %{FILENAMES}\n]"):
        perms, _, rest = line.partition(" ")
        flags, _, name = rest.partition(" ")
        files[name] = (perms, flags)
    assert files[HOOK][0] == "-rwxr-xr-x"
    assert (installed / HOOK.lstrip("/")).stat().st_mode & 0o7777 == 0o755
    assert files[CONF][1] == "cn", "config must be %config(noreplace)"
    for name in UNITS:
        assert f"{UNITDIR}/{name}" in files
    assert f"{UNITDIR}/{DROPIN}" in files
    assert "/usr/lib/systemd/system-preset/80-hugexml.preset" in files
    assert "/usr/lib/tmpfiles.d/hugexml.conf" in files
    assert "/usr/share/bash-completion/completions/hugexml" in files
    assert "/usr/share/hugexml/grafana/hugexml.json" in files
    assert [f for f in files if re.fullmatch(r"/usr/share/man/man8/hugexml\.8(\.gz)?", f)]
    assert "/usr/bin/hugexml" in files
    for d in ("/var/lib/hugexml", "/var/lib/hugexml/backups"):
        assert files[d][0] == "drwx------", d
    # the state dir is %ghost, created by tmpfiles.d with the mode rpm records for it
    assert [f for f in files if f.startswith("/run")] == ["/run/hugexml"]


def test_installed_package_is_the_whole_source_package(installed):
    installed_modules = {p.relative_to(sitelib(installed)).as_posix()
                         for p in (sitelib(installed) / "hugexml").rglob("*.py")}
    source_modules = {p.relative_to(REPO).as_posix() for p in (REPO / "hugexml").rglob("*.py")}
    assert installed_modules == source_modules


def test_hook_shebang_is_the_system_python3(installed):
    first = (installed / HOOK.lstrip("/")).read_text().splitlines()[0]
    assert first == f"#!{SYSTEM_PYTHON} -I"
    assert os.path.realpath(SYSTEM_PYTHON).startswith("/usr/"), "not a shim or a venv"
    cli_first = (installed / "usr/bin/hugexml").read_text().splitlines()[0]
    assert cli_first.split()[0] == f"#!{SYSTEM_PYTHON}"


def installed_env(installed: Path, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "host").mkdir()
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(tmp_path),
            "PYTHONPATH": str(sitelib(installed)), "PYTHONDONTWRITEBYTECODE": "1",
            "HUGEXML_ROOT": str(tmp_path / "host"), "HUGEXML_STATE_DIR": str(tmp_path / "state"),
            "HUGEXML_CONFIG": str(installed / CONF.lstrip("/"))}


def test_installed_package_imports_and_runs(installed, tmp_path):
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"no {SYSTEM_PYTHON}")
    env = installed_env(installed, tmp_path)
    proc = _run([SYSTEM_PYTHON, "-c", "import hugexml, hugexml.cli.main, "
                 "hugexml.qemuhook.dispatch, hugexml.hook; "
                 "print(hugexml.__file__)"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(sitelib(installed))), proc.stdout
    import hugexml

    proc = _run([SYSTEM_PYTHON, str(installed / "usr/bin/hugexml"), "--version"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hugexml {hugexml.__version__}"


def test_installed_hook_runs_a_guest_event(installed, tmp_path):
    """libvirt's call for a guest without hugepages: the hook reads the XML and exits 0."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"no {SYSTEM_PYTHON}")
    env = installed_env(installed, tmp_path)
    xml = b"<domain type='kvm'><name>plain</name><memory unit='MiB'>64</memory></domain>"
    # The shebang's -I would ignore PYTHONPATH: run the same file with the same python.
    for op in (["prepare", "begin"], ["release", "end"], ["stopped", "end"]):
        proc = subprocess.run([SYSTEM_PYTHON, str(installed / HOOK.lstrip("/")), "plain", *op,
                               "-"], input=xml, capture_output=True, env=env, cwd="/",
                              timeout=60)
        assert proc.returncode == 0, (op, proc.stderr)
        assert proc.stdout == b"", op


def test_systemd_analyze_verify(installed, tmp_path):
    analyze = _need("systemd-analyze") if REQUIRE_REAL else shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not here")
    units = [*UNITS]
    host_mount = next((p for p in ("/usr/lib/systemd/system/dev-hugepages.mount",
                                   "/lib/systemd/system/dev-hugepages.mount")
                       if os.path.exists(p)), None)
    if host_mount:  # systemd's own unit, so that our drop-in is read with it
        shutil.copy(host_mount, installed / UNITDIR.lstrip("/"))
        units.append("dev-hugepages.mount")
    # the timer and its service keep systemd's default dependencies: the targets they
    # name must be there to be verified
    for directory in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        for target in glob.glob(os.path.join(directory, "*.target")):
            dest = installed / UNITDIR.lstrip("/") / os.path.basename(target)
            if not dest.exists():
                shutil.copy(target, dest)
    proc = _run([analyze, "verify", "--man=no", f"--root={installed}", *units])
    assert proc.returncode == 0 and (proc.stdout + proc.stderr).strip() == "", proc.stderr

    # The same call does see a bad unit (it reports and ignores unknown settings).
    bad = tmp_path / "bad"
    shutil.copytree(installed / "usr", bad / "usr", symlinks=True)
    service = bad / UNITDIR.lstrip("/") / "hugexml-reserve.service"
    service.write_text(service.read_text().replace("Type=oneshot", "Type=oneshott"))
    proc = _run([analyze, "verify", "--man=no", f"--root={bad}", "hugexml-reserve.service"])
    assert "oneshott" in proc.stdout + proc.stderr


def _page_dir(size_kib: int) -> bool:
    return os.path.isdir(f"/sys/kernel/mm/hugepages/hugepages-{size_kib}kB")


@pytest.mark.parametrize(("cmdline", "want_1g", "want_2m"), [
    ("quiet", True, False),                               # 2M default: systemd's own mount
    ("default_hugepagesz=2M hugepagesz=1G", True, False),
    ("default_hugepagesz=2048k", True, False),
    ("default_hugepagesz=2097152", True, False),
    ("default_hugepagesz=1G hugepagesz=2M", False, True),  # 1G default: 2M needs its own
    ("default_hugepagesz=1g", False, True),
    ("default_hugepagesz=1048576K", False, True),
    ("default_hugepagesz=1073741824", False, True),
])
def test_mount_unit_conditions(installed, cmdline, want_1g, want_2m):
    """Each mount runs exactly when its size exists and is not the kernel's default size."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not here")
    for name, want in (("dev-hugepages1G.mount", want_1g and _page_dir(1048576)),
                       ("dev-hugepages2M.mount", want_2m and _page_dir(2048))):
        proc = _run([analyze, "condition", f"--root={installed}", f"--unit={name}"],
                    env={**os.environ, "SYSTEMD_PROC_CMDLINE": cmdline})
        assert "Unknown" not in proc.stderr, proc.stderr
        assert (proc.returncode == 0) == want, (name, cmdline, proc.stderr)


def test_preset_and_install_sections(installed):
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        pytest.skip("systemctl not here")
    proc = _run([systemctl, f"--root={installed}", "preset", *UNITS])
    assert proc.returncode == 0, proc.stderr
    proc = _run([systemctl, f"--root={installed}", "is-enabled", *UNITS])
    assert proc.stdout.split() == ["enabled", "enabled", "disabled", "static", "enabled"], \
        proc.stdout


def test_tmpfiles_creates_the_state_dir(installed, tmp_path):
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles not here")
    root = tmp_path / "fresh"
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    shutil.copy(installed / "usr/lib/tmpfiles.d/hugexml.conf", root / "usr/lib/tmpfiles.d")
    proc = _run([tmpfiles, f"--root={root}", "--create", "hugexml.conf"])
    assert proc.returncode == 0, proc.stderr
    st = (root / "run/hugexml").stat()
    assert stat.S_ISDIR(st.st_mode) and oct(st.st_mode & 0o7777) == "0o755"
    assert st.st_uid == 0 or os.geteuid() != 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
