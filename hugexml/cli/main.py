"""The thin command line: global options, a table of commands, error-to-exit-code mapping.

Each command lives in ``hugexml.cli.<module>`` and exposes ``HELP`` (one line),
``EPILOG`` (an example), ``add_arguments(parser)`` and ``run(args, ctx) -> int``. Heavy
imports (lxml, psutil, libvirt) happen inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hugexml import __version__
from hugexml.core.errors import HugexmlError
from hugexml.core.root import HostRoot, config_from_env, state_dir_from_env
from hugexml.core.typed import Typed

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

# command name -> module under hugexml.cli
COMMANDS: dict[str, str] = {
    "plan": "plan",
    "rewrite": "rewrite",
    "status": "status",
    "allocate": "allocate",
    "shrink": "shrink",
    "reserve": "reserve",
    "release": "release",
    "reconcile": "reconcile",
    "mounts": "mounts",
    "boot": "boot",
    "doctor": "doctor",
    "install-hook": "install_hook",
    "uninstall-hook": "uninstall_hook",
    "apply": "apply",
    "qemu-args": "qemu_args",
}


# CPython ships no translation of argparse's own words, yet each of its gettext calls probes
# the locale directories for one (about 2 ms per parser): its words are taken as they are.
argparse._ = str  # type: ignore[attr-defined]


class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter (argparse makes one per ``add_argument``) with the terminal
    width read as ``shutil.get_terminal_size`` reads it, without importing shutil."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


_columns: list[int] = []


def terminal_columns() -> int:
    """$COLUMNS, else the width of the terminal on stdout, else 80 (read once)."""
    if _columns:
        return _columns[0]
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    _columns.append(columns or 80)
    return _columns[0]


class Context(Typed, frozen=True):
    root: HostRoot
    state_dir: str
    config_path: str
    config_explicit: bool
    verbose: int


GLOBAL_WITH_VALUE = ("--root", "--state-dir", "--config")


def chosen_command(argv: Sequence[str]) -> Optional[str]:
    """The command named on a command line, found without building a parser: the first word
    that is neither a global option nor its value. None before ``-h``/``--version`` or
    without a known command (then the full parser answers, or explains)."""
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help", "--version"):
            return None
        if word in GLOBAL_WITH_VALUE:
            next(words, None)
            continue
        if word.startswith("-"):
            continue
        return word if word in COMMANDS else None
    return None


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of every command (``--help``, the man page and completion generators), or
    with ``only`` of that one command: a call imports and builds just what it runs."""
    parser = argparse.ArgumentParser(
        prog="hugexml",
        description="Hugepages for KVM guests: plan, rewrite, allocate, check.",
        epilog="example: hugexml plan /etc/libvirt/qemu/vm1.xml --json",
        formatter_class=Formatter,
    )
    parser.add_argument("--root", metavar="DIR",
                        help="host root for sysfs/procfs (env HUGEXML_ROOT)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="state and lock dir (env HUGEXML_STATE_DIR, default "
                             "/run/hugexml under --root)")
    parser.add_argument("--config", metavar="FILE",
                        help="config file (env HUGEXML_CONFIG, "
                             "default /etc/hugexml/hugexml.conf under --root)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--version", action="version", version=f"hugexml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(f"hugexml.cli.{module_name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=getattr(module, "EPILOG", None),
            formatter_class=Formatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(chosen_command(words)).parse_args(words)
    root = HostRoot.from_env(args.root)
    ctx = Context(
        root=root,
        state_dir=state_dir_from_env(args.state_dir, root),
        config_path=config_from_env(args.config, root),
        config_explicit=bool(args.config),
        verbose=args.verbose,
    )
    try:
        return int(args._module.run(args, ctx) or 0)
    except HugexmlError as exc:
        print(f"hugexml {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hugexml {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def run() -> None:
    """The ``hugexml`` command (and ``python -m hugexml``): ``main``, then the exit without
    the interpreter's teardown, as the hook exits (finalising every module and object costs
    ~3 ms, ~7 ms once lxml is loaded: a fifth of a ``rewrite``). Nothing is lost by it:
    every file hugexml writes is written and closed (the state fsynced) before ``main``
    returns, nothing registers atexit work, and stdout and stderr are flushed here. An
    uncaught exception (a bug) still ends the normal way, with its traceback."""
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, --version, a usage error
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader went away, or stdout was closed
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
