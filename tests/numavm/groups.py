"""The VM boots of the numavm batch: one entry per boot, shared by the host and the guest.

A test joins a boot with ``pytestmark = pytest.mark.numavm("runtime")`` in its module
(tests/numavm/test_*.py). CI boots each group that has selected tests once (about 25 s each,
plus the tests): keep to these groups, at most 3. Pure data; the guest asserts it got the
layout and the kernel command line named here.
"""
from __future__ import annotations

from dataclasses import dataclass

from hugexml.system.boot import kernel_params, parse_specs

M2, G1 = 2048, 1 << 20


@dataclass(frozen=True)
class VmGroup:
    name: str
    node_mem: tuple[str, ...]           # per node, as scripts/numa-vm --node-mem takes it
    append: tuple[str, ...] = ()        # kernel command line
    cpus: int = 2                       # vCPUs, on the first nodes one each
    timeout_s: float = 1200

    @property
    def nodes(self) -> int:
        return len(self.node_mem)


# Nodes 1 and 3 are large enough to give 1G pages at runtime under TCG (a 4G node gave one in
# 3 runs out of 3; a 3G node in 2 out of 3); nodes 0 and 2 are small: the 1G margin bites.
LAYOUT = ("2G", "4G", "2G", "4G")

# What `hugexml boot --reserve ... --default-size 2M` is asked for the boot group, and what
# [boot] reserve asks afterwards (more than the command line gave: the service tops up).
BOOT_RESERVE_CMDLINE = ("2M:100@1", "2M:64@2", "1G:1@1", "1G:1@3")
BOOT_DEFAULT_SIZE = "2M"
BOOT_RESERVE_CONFIG = "2M:100@1 2M:96@2 1G:1@1 1G:2@3 2M:16@0"


def boot_cmdline() -> tuple[str, ...]:
    """The parameters ``hugexml boot`` prints for BOOT_RESERVE_CMDLINE (its pure core; the
    guest checks the command's own output against /proc/cmdline)."""
    return tuple(kernel_params(parse_specs(BOOT_RESERVE_CMDLINE), M2))


GROUPS = {
    "runtime": VmGroup("runtime", LAYOUT),
    # 4 vCPUs: libvirt binds qemu's preallocation threads to the memory's node, which then
    # needs a CPU (test_vm_libvirt.py runs here too)
    # node 3 larger: [boot] reserve asks a second 1G page there at runtime, and under TCG a
    # 4G node that already gave one at boot did not always have another whole free GiB
    "boot": VmGroup("boot", ("2G", "4G", "2G", "6G"), boot_cmdline(), cpus=4),
}
