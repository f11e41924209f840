"""The hook's stable entry point: every hook file hugexml ever installed (``hooks/qemu``,
``install-hook``'s bodies, the RPM's file) runs ``from hugexml.hook import main`` (or
``chain``), and a file written by an older version must keep working after an upgrade: a
hook that cannot import exits 1 at ``prepare`` for every hugepage guest. The hook itself is
``hugexml.qemuhook.dispatch``."""
from hugexml.qemuhook.dispatch import chain, main

__all__ = ["chain", "main"]
