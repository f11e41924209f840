"""The injectable host root. Every host path in hugexml is built here.

``HostRoot("/")`` is the real host; tests point it at a fake sysfs/procfs tree, as psutil
resolves its procfs root. Paths are given relative to the root ("sys/kernel/mm"). The
default state dir and config file live under the root too: ``--root DIR`` means one thing.
"""
from __future__ import annotations

import os

ROOT_ENV = "HUGEXML_ROOT"
STATE_DIR_ENV = "HUGEXML_STATE_DIR"
CONFIG_ENV = "HUGEXML_CONFIG"
DEFAULT_STATE_DIR = "/run/hugexml"
DEFAULT_CONFIG = "/etc/hugexml/hugexml.conf"


class HostRoot:
    __slots__ = ("base",)

    def __init__(self, base: str | None = None) -> None:
        self.base = os.path.abspath(base or "/")

    @classmethod
    def from_env(cls, option: str | None = None) -> HostRoot:
        return cls(option or os.environ.get(ROOT_ENV) or "/")

    @property
    def is_real(self) -> bool:
        return self.base == "/"

    def path(self, *parts: str) -> str:
        rel = os.path.join(*parts).lstrip("/") if parts else ""
        return os.path.join(self.base, rel) if rel else self.base

    __call__ = path

    def __repr__(self) -> str:
        return f"HostRoot({self.base!r})"


def state_dir_from_env(option: str | None = None, root: HostRoot | None = None) -> str:
    """The state dir: the option, else $HUGEXML_STATE_DIR, else /run/hugexml under the
    host root (``--root DIR`` means DIR/run/hugexml: a copy of a host never writes the real
    host's state)."""
    return option or os.environ.get(STATE_DIR_ENV) or (root or HostRoot()).path(
        DEFAULT_STATE_DIR)


def config_from_env(option: str | None = None, root: HostRoot | None = None) -> str:
    """The config file: the option, else $HUGEXML_CONFIG, else /etc/hugexml/hugexml.conf
    under the host root."""
    return option or os.environ.get(CONFIG_ENV) or (root or HostRoot()).path(DEFAULT_CONFIG)
