"""libvirt 9.0's rules for memory, NUMA, numatune, memoryBacking and memory devices, one
domain per rule that breaks exactly that rule (docs/libvirt-validation.md names each by id).

``RULES``: id -> ``Rule``. ``stage`` says where libvirt refuses: ``define`` (``virsh define``
and ``domxml-to-native`` both refuse) or ``start`` (define accepts, the start refuses;
``domxml-to-native`` is a pretend start). ``message`` is libvirt's own message (without the
error-code prefix such as ``XML error: ``); ``ours`` the one hugexml gives when it words a
host fact itself. ``via``: which hugexml entry refuses (``plan``, as the hook's prepare and
``reserve``; ``qemu-args`` run as a pretend start). tests/test_validate.py checks hugexml
against every row, tests/libvirt/test_differential.py checks libvirt 9.0 against every row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

HOTPLUG = "<maxMemory slots='4' unit='GiB'>8</maxMemory>"
CELLS = ("<cpu><numa><cell id='0' cpus='0' memory='1024' unit='MiB'/>"
         "<cell id='1' cpus='1' memory='1024' unit='MiB'/></numa></cpu>")
DIMM = "<memory model='dimm'><target><size unit='MiB'>512</size><node>0</node></target></memory>"
CACHE = ("<cache level='{level}' associativity='direct' policy='writeback'>"
         "<size value='10' unit='KiB'/><line value='8' unit='B'/></cache>")
VMEM = ("<memory model='virtio-mem'><target><size unit='MiB'>512</size><node>0</node>"
        "<block unit='MiB'>{block}</block><requested unit='MiB'>{requested}</requested>"
        "</target></memory>")
NVDIMM = ("<memory model='nvdimm'{attrs}><source><path>/tmp/nvdimm</path></source>"
          "<target><size unit='MiB'>512</size><node>0</node>{label}</target>{uuid}</memory>")
BASE = {
    "memory": "<memory unit='MiB'>2048</memory>",
    "max": "",
    "backing": "<memoryBacking><hugepages><page size='2' unit='M'/></hugepages></memoryBacking>",
    "memtune": "",
    "vcpu": "<vcpu>2</vcpu>",
    "numatune": "",
    "cpu": CELLS,
    "devices": "",
}


def domain(name: str, **parts: str) -> bytes:
    p = {**BASE, **parts}
    return (f"<domain type='kvm'><name>{name}</name>{p['max']}{p['memory']}{p['backing']}"
            f"{p['memtune']}{p['vcpu']}{p['numatune']}"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"{p['cpu']}<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"<memballoon model='none'/>{p['devices']}</devices></domain>").encode()


def cell(extra: str = "", cid: str = "0", cpus: str = "0", memory: str = "1024",
         inner: str = "") -> str:
    head = f"<cell id='{cid}' cpus='{cpus}' memory='{memory}' unit='MiB'{extra}"
    return head + (f">{inner}</cell>" if inner else "/>")


def numa(*cells: str, interconnects: str = "") -> str:
    links = f"<interconnects>{interconnects}</interconnects>" if interconnects else ""
    return "<cpu><numa>" + "".join(cells) + links + "</numa></cpu>"


def latency(initiator: str = "0", target: str = "0", extra: str = "") -> str:
    return (f"<latency initiator='{initiator}' target='{target}' type='access' value='5'"
            f"{extra}/>")


@dataclass(frozen=True)
class Rule:
    message: str
    parts: dict[str, str]
    stage: str = "define"
    ours: Optional[str] = None
    via: str = "plan"
    # libvirt 9.0 writes past its cell array on this error (numa_conf.c
    # virDomainNumaDefNodeDistanceParseXML's cleanup): a daemon that parsed it may crash
    # later, so the daemon test restarts it afterwards
    corrupts_libvirtd: bool = False

    def xml(self, rule_id: str) -> bytes:
        return domain(f"hxtest-rule-{rule_id}", **self.parts)


def R(message: str, stage: str = "define", ours: Optional[str] = None, via: str = "plan",
      corrupts_libvirtd: bool = False, **parts: str) -> Rule:
    return Rule(message, parts, stage, ours, via, corrupts_libvirtd)


C0, C1 = cell(), cell(cid="1", cpus="1")
RULES: dict[str, Rule] = {
    # --- sizes: virDomainParseMemory / virParseScaledValue / virScaleInteger -----------------
    "memory-value": R("Invalid value '12x' for element or attribute './memory[1]'",
                      memory="<memory unit='MiB'>12x</memory>"),
    "memory-value-space": R("Invalid value '2048 ' for element or attribute './memory[1]'",
                            memory="<memory unit='MiB'>2048 </memory>"),
    "current-memory-value": R("Invalid value 'x' for element or attribute './currentMemory[1]'",
                              memory="<memory unit='MiB'>2048</memory>"
                                     "<currentMemory unit='MiB'>x</currentMemory>"),
    "max-memory-value": R("Invalid value '-8' for element or attribute './maxMemory[1]'",
                          max="<maxMemory slots='4' unit='GiB'>-8</maxMemory>"),
    "memory-unit": R("unknown suffix 'MB2'", memory="<memory unit='MB2'>2048</memory>"),
    "memory-overflow": R("value too large: 8EiB", memory="<memory unit='EiB'>8</memory>"),
    "memory-kib-overflow": R("size value too large",
                             memory="<memory unit='b'>9223372036854775807</memory>"),
    "page-size-required": R("missing element or attribute './@size'",
                            backing="<memoryBacking><hugepages><page unit='M'/></hugepages>"
                                    "</memoryBacking>"),
    "max-memory-slots": R("Failed to parse memory slot count",
                          max="<maxMemory slots='x' unit='GiB'>8</maxMemory>"),
    "memory-dumpcore": R("Invalid value for attribute 'dumpCore' in element 'memory': 'yes'.",
                         memory="<memory unit='MiB' dumpCore='yes'>2048</memory>"),
    # --- <memoryBacking> -------------------------------------------------------------------
    "backing-source": R("unknown memoryBacking/source/type 'none'",
                        backing="<memoryBacking><source type='none'/></memoryBacking>"),
    "backing-access": R("unknown memoryBacking/access/mode 'default'",
                        backing="<memoryBacking><access mode='default'/></memoryBacking>"),
    "backing-allocation": R("unknown memoryBacking/allocation/mode 'lazy'",
                            backing="<memoryBacking><allocation mode='lazy'/></memoryBacking>"),
    "allocation-threads": R("Failed to parse memory allocation threads",
                            backing="<memoryBacking><allocation mode='immediate' threads='-1'/>"
                                    "</memoryBacking>"),
    "page-size-zero": R("hugepage size can't be zero",
                        backing="<memoryBacking><hugepages><page size='0'/></hugepages>"
                                "</memoryBacking>"),
    "page-nodeset-syntax": R("Failed to parse bitmap '0-'",
                             backing="<memoryBacking><hugepages><page size='2' unit='M' "
                                     "nodeset='0-'/></hugepages></memoryBacking>"),
    "bitmap-limit": R("Failed to parse bitmap '16384'",
                      backing="<memoryBacking><hugepages><page size='2' unit='M' "
                              "nodeset='16384'/></hugepages></memoryBacking>"),
    "page-nodeset-empty": R("Invalid value of 'nodeset': 1,^1",
                            backing="<memoryBacking><hugepages><page size='2' unit='M' "
                                    "nodeset='1,^1'/></hugepages></memoryBacking>"),
    # --- <memtune> -------------------------------------------------------------------------
    "memtune-limit": R("Invalid value 'x' for element or attribute './memtune/hard_limit[1]'",
                       memtune="<memtune><hard_limit unit='KiB'>x</hard_limit></memtune>"),
    "memtune-limit-max": R("value too large: 9007199254740992",
                           memtune="<memtune><swap_hard_limit>9007199254740992</swap_hard_limit>"
                                   "</memtune>"),
    "min-guarantee": R("Parameter 'min_guarantee' not supported by QEMU.",
                       memtune="<memtune><min_guarantee unit='MiB'>512</min_guarantee>"
                               "</memtune>"),
    # --- guest NUMA cells ------------------------------------------------------------------
    "numa-no-cells": R("NUMA topology defined without NUMA cells", cpu="<cpu><numa/></cpu>"),
    "cell-id-syntax": R("Invalid value for attribute 'id' in element 'cell': 'x'. Expected "
                        "non-negative integer value", cpu=numa(cell(cid="x"), C1)),
    "cell-id-range": R("Exactly one 'cell' element per guest NUMA cell allowed, non-contiguous "
                       "ranges or ranges not starting from 0 are not allowed",
                       cpu=numa(C0, cell(cid="2", cpus="1"))),
    "cell-id-duplicate": R("Duplicate NUMA cell info for cell id '1'",
                           cpu=numa(cell(cid="1"), C1)),
    "cell-cpus-syntax": R("Failed to parse bitmap 'a'", cpu=numa(cell(cpus="a"), C1)),
    "cell-cpus-overlap": R("NUMA cells 1 and 0 have overlapping vCPU ids",
                           cpu=numa(cell(cpus="0-1"), C1)),
    "cell-memory-required": R("missing element or attribute './@memory'",
                              cpu="<cpu><numa><cell id='0' cpus='0-1'/></numa></cpu>"),
    "cell-memaccess": R("Invalid value for attribute 'memAccess' in element 'cell': 'default'.",
                        cpu=numa(cell(" memAccess='default'"), C1)),
    "cell-discard": R("Invalid value for attribute 'discard' in element 'cell': 'maybe'.",
                      cpu=numa(cell(" discard='maybe'"), C1)),
    "numa-cpus-count": R("Number of CPUs in <numa> exceeds the <vcpu> count",
                         vcpu="<vcpu>1</vcpu>"),
    "numa-cpus-ids": R("CPU IDs in <numa> exceed the <vcpu> count",
                       cpu=numa(C0, cell(cid="1", cpus="2"))),
    "distances-no-siblings": R("NUMA distances defined without siblings",
                               cpu=numa(cell(inner="<distances/>"), C1),
                               corrupts_libvirtd=True),
    "sibling-id-required": R("Missing required attribute 'id' in element 'sibling'",
                             cpu=numa(cell(inner="<distances><sibling value='20'/></distances>"),
                                      C1), corrupts_libvirtd=True),
    "sibling-id-range": R("'sibling_id 2' does not refer to a valid cell within NUMA "
                          "'cell id 0'", cpu=numa(cell(inner="<distances><sibling id='2' "
                                                             "value='20'/></distances>"), C1),
                          corrupts_libvirtd=True),
    "sibling-value-required": R("Missing required attribute 'value' in element 'sibling'",
                                cpu=numa(cell(inner="<distances><sibling id='1'/></distances>"),
                                         C1), corrupts_libvirtd=True),
    "sibling-value-range": R("'value 20' is invalid for 'sibling id 0' under NUMA 'cell id 0'",
                             cpu=numa(cell(inner="<distances><sibling id='0' value='20'/>"
                                                 "</distances>"), C1), corrupts_libvirtd=True),
    "cache-level-missing": R("Missing 'level' attribute in cache element for NUMA node 0",
                             cpu=numa(cell(inner=CACHE.replace("level='{level}' ", "")), C1)),
    "cache-level-invalid": R("Invalid 'level' attribute in cache element for NUMA node 0",
                             cpu=numa(cell(inner=CACHE.format(level=0)), C1)),
    "cache-associativity-missing": R("Missing 'associativity' attribute in cache element for "
                                     "NUMA node 0",
                                     cpu=numa(cell(inner=CACHE.format(level=1).replace(
                                         "associativity='direct' ", "")), C1)),
    "cache-associativity": R("Invalid cache associativity 'some'",
                             cpu=numa(cell(inner=CACHE.format(level=1).replace(
                                 "'direct'", "'some'")), C1)),
    "cache-policy": R("Invalid cache policy 'lazy'",
                      cpu=numa(cell(inner=CACHE.format(level=1).replace("'writeback'",
                                                                        "'lazy'")), C1)),
    "cache-size-required": R("missing element or attribute './size/@value'",
                             cpu=numa(cell(inner=CACHE.format(level=1).replace(
                                 "<size value='10' unit='KiB'/>", "")), C1)),
    "cache-line-required": R("missing element or attribute './line/@value'",
                             cpu=numa(cell(inner=CACHE.format(level=1).replace(
                                 "<line value='8' unit='B'/>", "")), C1)),
    "latency-value-required": R("Missing required attribute 'value' in element 'latency'",
                                cpu=numa(C0, C1, interconnects=latency().replace(
                                    " value='5'", ""))),
    "latency-initiator-required": R("Missing required attribute 'initiator' in element "
                                    "'latency'",
                                    cpu=numa(C0, C1, interconnects=latency().replace(
                                        "initiator='0' ", ""))),
    "latency-type": R("Invalid value for attribute 'type' in element 'latency': 'fast'.",
                      cpu=numa(C0, C1, interconnects=latency().replace("'access'", "'fast'"))),
    "cache-level-max": R("Ain't nobody heard of that much cache level",
                         cpu=numa(cell(inner=CACHE.format(level=4)), C1)),
    "cache-level-twice": R("Cache level '1' already defined",
                           cpu=numa(cell(inner=CACHE.format(level=1) * 2), C1)),
    "initiator-range": R("'initiator' refers to a non-existent NUMA node",
                         cpu=numa(C0, C1, interconnects=latency(initiator="2"))),
    "target-range": R("'target' refers to a non-existent NUMA node",
                      cpu=numa(C0, C1, interconnects=latency(target="2"))),
    "initiator-cpus": R("NUMA nodes without CPUs can't be initiator",
                        cpu=numa(cell(cpus="0-1"), "<cell id='1' memory='1024' unit='MiB'/>",
                                 interconnects=latency(initiator="1"))),
    "interconnect-cache": R("'cache' refers to a non-existent NUMA node cache",
                            cpu=numa(C0, C1, interconnects=latency(extra=" cache='1'"))),
    "interconnect-duplicate": R("Duplicate info for NUMA latencies",
                                cpu=numa(C0, C1, interconnects=latency() * 2)),
    "interconnect-link": R("Link already defined",
                           cpu=numa(C0, C1, interconnects=latency("0", "1")
                                    + latency("1", "0"))),
    # --- <numatune> ------------------------------------------------------------------------
    "numatune-twice": R("only one numatune is supported",
                        numatune="<numatune/><numatune/>"),
    "numatune-mode": R("Unsupported NUMA memory tuning mode 'bind'",
                       numatune="<numatune><memory mode='bind' nodeset='0'/></numatune>"),
    "numatune-placement": R("Unsupported NUMA memory placement mode 'numad'",
                            numatune="<numatune><memory placement='numad'/></numatune>"),
    "numatune-nodeset-syntax": R("Failed to parse bitmap 'x'",
                                 numatune="<numatune><memory nodeset='x'/></numatune>"),
    "numatune-nodeset-empty": R("Invalid value of 'nodeset': 0,^0",
                                numatune="<numatune><memory nodeset='0,^0'/></numatune>"),
    "numatune-static-no-nodeset": R("nodeset for NUMA memory tuning must be set if "
                                    "'placement' is 'static'",
                                    numatune="<numatune><memory mode='preferred'/></numatune>"),
    "memnode-auto": R("Per-node binding is not compatible with automatic NUMA placement.",
                      numatune="<numatune><memory placement='auto'/>"
                               "<memnode cellid='0' nodeset='0'/></numatune>"),
    "memnode-auto-vcpu": R("Per-node binding is not compatible with automatic NUMA placement.",
                           vcpu="<vcpu placement='auto'>2</vcpu>",
                           numatune="<numatune><memnode cellid='0' nodeset='0'/></numatune>"),
    "memnode-no-cells": R("Element 'memnode' is invalid without any guest NUMA cells", cpu="",
                          numatune="<numatune><memnode cellid='0' nodeset='0'/></numatune>"),
    "memnode-cellid-required": R("Missing required attribute 'cellid' in element 'memnode'",
                                 numatune="<numatune><memnode nodeset='0'/></numatune>"),
    "memnode-cellid-range": R("Argument 'cellid' in memnode element must correspond to "
                              "existing guest's NUMA cell",
                              numatune="<numatune><memnode cellid='2' nodeset='0'/></numatune>"),
    "memnode-twice": R("Multiple memnode elements with cellid 0",
                       numatune="<numatune><memnode cellid='0' nodeset='0'/>"
                                "<memnode cellid='0' nodeset='0'/></numatune>"),
    "memnode-mode": R("Invalid value for attribute 'mode' in element 'memnode': 'lax'.",
                      numatune="<numatune><memnode cellid='0' mode='lax' nodeset='0'/>"
                               "</numatune>"),
    "memnode-restrictive": R("'restrictive' mode is required in memnode element when mode is "
                             "'restrictive' in memory element",
                             numatune="<numatune><memory mode='restrictive' nodeset='0'/>"
                                      "<memnode cellid='0' mode='strict' nodeset='0'/>"
                                      "</numatune>"),
    "memnode-nodeset-missing": R("Missing required nodeset attribute in memnode element",
                                 numatune="<numatune><memnode cellid='0'/></numatune>"),
    "memnode-nodeset-syntax": R("Failed to parse bitmap '0-a'",
                                numatune="<numatune><memnode cellid='0' nodeset='0-a'/>"
                                         "</numatune>"),
    "memnode-nodeset-empty": R("Invalid value of 'nodeset': ^0",
                               numatune="<numatune><memnode cellid='0' nodeset='^0'/>"
                                        "</numatune>"),
    # --- memory devices: parsing -----------------------------------------------------------
    "device-model-required": R("Missing required attribute 'model' in element 'memory'",
                               max=HOTPLUG, devices=DIMM.replace(" model='dimm'", "")),
    "device-model": R("Invalid value for attribute 'model' in element 'memory': 'ram'.",
                      max=HOTPLUG, devices=DIMM.replace("'dimm'", "'ram'")),
    "device-access": R("Invalid value for attribute 'access' in element 'memory': 'default'.",
                       max=HOTPLUG, devices=DIMM.replace("'dimm'", "'dimm' access='default'")),
    "device-discard": R("Invalid value for attribute 'discard' in element 'memory': 'on'.",
                        max=HOTPLUG, devices=DIMM.replace("'dimm'", "'dimm' discard='on'")),
    "device-pagesize": R("Invalid value '2M' for element or attribute './pagesize'",
                         max=HOTPLUG, devices=DIMM.replace(
                             "<target>", "<source><pagesize unit='KiB'>2M</pagesize></source>"
                                         "<target>")),
    "device-nodemask-syntax": R("Failed to parse bitmap 'x'", max=HOTPLUG, devices=DIMM.replace(
        "<target>", "<source><nodemask>x</nodemask></source><target>")),
    "device-nodemask-empty": R("Invalid value of 'nodemask': 0,^0", max=HOTPLUG,
                               devices=DIMM.replace("<target>", "<source><nodemask>0,^0"
                                                                "</nodemask></source><target>")),
    "device-target-missing": R("missing <target> element for <memory> device", max=HOTPLUG,
                               devices="<memory model='dimm'/>"),
    "device-node": R("invalid value of memory device node", max=HOTPLUG,
                     devices=DIMM.replace("<node>0</node>", "<node>-1</node>")),
    "device-size-required": R("missing element or attribute './size'", max=HOTPLUG,
                              devices="<memory model='dimm'><target><node>0</node></target>"
                                      "</memory>"),
    "nvdimm-label-min": R("nvdimm label must be at least 128KiB", max=HOTPLUG,
                          devices=NVDIMM.format(attrs="", uuid="", label="<label><size "
                                                "unit='KiB'>64</size></label>")),
    "nvdimm-label-size": R("label size must be smaller than NVDIMM size", max=HOTPLUG,
                           devices=NVDIMM.format(attrs="", uuid="", label="<label><size "
                                                 "unit='MiB'>512</size></label>")),
    "address-type-missing": R("No type specified for device address", max=HOTPLUG,
                              devices=DIMM.replace("</memory>", "<address slot='0'/></memory>")),
    "address-type": R("unknown address type 'bus'", max=HOTPLUG,
                      devices=DIMM.replace("</memory>", "<address type='bus'/></memory>")),
    "dimm-address-slot": R("Missing required attribute 'slot' in element 'address'",
                           max=HOTPLUG, devices=DIMM.replace(
                               "</memory>", "<address type='dimm'/></memory>")),
    # --- after parsing: memory sizes and slots ---------------------------------------------
    "devices-exceed-memory": R("Total size of memory devices exceeds the total memory size",
                               cpu="", max=HOTPLUG, memory="<memory unit='MiB'>256</memory>",
                               devices=DIMM.replace("<node>0</node>", "")),
    "memory-zero": R("Memory size must be specified via <memory> or in the <numa> "
                     "configuration", cpu="", memory="<memory>0</memory>"),
    "max-memory-slots-both": R("both maximum memory size and memory slot count must be "
                               "specified", max="<maxMemory unit='GiB'>8</maxMemory>"),
    "max-memory-small": R("maximum memory size must be equal or greater than the actual "
                          "memory size", max="<maxMemory slots='4' unit='GiB'>1</maxMemory>"),
    "memory-slot-free": R("failed to find an empty memory slot",
                          max="<maxMemory slots='1' unit='GiB'>8</maxMemory>",
                          devices=DIMM * 2),
    # --- qemu driver validation --------------------------------------------------------------
    "hotplug-no-maxmemory": R("cannot use/hotplug a memory device when domain 'maxMemory' is "
                              "not defined", devices=DIMM),
    "hotplug-no-numa": R("At least one numa node has to be configured when enabling memory "
                         "hotplug", cpu="", max=HOTPLUG),
    "hotplug-slots": R("memory device count '2' exceeds slots count '1'",
                       max="<maxMemory slots='1' unit='GiB'>8</maxMemory>",
                       devices=VMEM.format(block=2, requested=0) * 2),
    "device-target-node-required": R("target NUMA node needs to be specified for memory device",
                                     max=HOTPLUG, devices=DIMM.replace("<node>0</node>", "")),
    "dimm-slot-range": R("memory device slot '4' exceeds slots count '4'", max=HOTPLUG,
                         devices=DIMM.replace("</memory>",
                                              "<address type='dimm' slot='4'/></memory>")),
    "dimm-slot-conflict": R("memory device slot '0' is already being used by another memory "
                            "device", max=HOTPLUG,
                            devices=DIMM.replace("</memory>",
                                                 "<address type='dimm' slot='0'/></memory>") * 2),
    "dimm-base-conflict": R("memory device base '0x100000000' is already being used by "
                            "another memory device", max=HOTPLUG,
                            devices="".join(DIMM.replace(
                                "</memory>", f"<address type='dimm' slot='{i}' "
                                             "base='0x100000000'/></memory>") for i in (0, 1))),
    "virtio-mem-address": R("only 'pci' addresses are supported for the virtio-mem device",
                            max=HOTPLUG, devices=VMEM.format(block=2, requested=0).replace(
                                "</memory>", "<address type='dimm' slot='0'/></memory>")),
    "hugepages-ondemand": R("hugepages are not allowed with memory allocation ondemand",
                            backing="<memoryBacking><hugepages/><allocation mode='ondemand'/>"
                                    "</memoryBacking>"),
    "hugepages-anonymous": R("hugepages are not allowed with anonymous memory source",
                             backing="<memoryBacking><hugepages/><source type='anonymous'/>"
                                     "</memoryBacking>"),
    "hugepages-4k-anonymous": R("hugepages are not allowed with anonymous memory source",
                                backing="<memoryBacking><hugepages><page size='4' unit='KiB'/>"
                                        "</hugepages><source type='anonymous'/>"
                                        "</memoryBacking>"),
    # --- memory devices: validation ----------------------------------------------------------
    "device-node-range": R("can't add memory backend for guest node '2' as the guest has only "
                           "'2' NUMA nodes configured", max=HOTPLUG,
                           devices=DIMM.replace("<node>0</node>", "<node>2</node>")),
    "nvdimm-path": R("path is required for model 'nvdimm'", max=HOTPLUG,
                     devices=NVDIMM.format(attrs="", uuid="", label="").replace(
                         "<source><path>/tmp/nvdimm</path></source>", "")),
    "nvdimm-discard": R("discard is not supported for nvdimms", max=HOTPLUG,
                        devices=NVDIMM.format(attrs=" discard='yes'", uuid="", label="")),
    "nvdimm-uuid": R("UUID is not supported for NVDIMM device", max=HOTPLUG,
                     devices=NVDIMM.format(attrs="", label="", uuid="<uuid>"
                                           "6b0d5c1e-8f7a-4c1d-9a55-0c2b6f7e9a10</uuid>")),
    "pmem-path": R("path is required for model 'virtio-pmem'", max=HOTPLUG,
                   devices="<memory model='virtio-pmem'><target><size unit='MiB'>512</size>"
                           "</target></memory>"),
    "pmem-discard": R("discard is not supported for model 'virtio-pmem'", max=HOTPLUG,
                      devices="<memory model='virtio-pmem' discard='yes'><source><path>/tmp/p"
                              "</path></source><target><size unit='MiB'>512</size></target>"
                              "</memory>"),
    "pmem-access": R("shared access mode required for virtio-pmem device", max=HOTPLUG,
                     devices="<memory model='virtio-pmem' access='private'><source><path>"
                             "/tmp/p</path></source><target><size unit='MiB'>512</size>"
                             "</target></memory>"),
    "pmem-node": R("virtio-pmem does not support NUMA nodes", max=HOTPLUG,
                   devices="<memory model='virtio-pmem'><source><path>/tmp/p</path></source>"
                           "<target><size unit='MiB'>512</size><node>0</node></target>"
                           "</memory>"),
    "virtio-mem-requested": R("requested size must be smaller than or equal to @size "
                              "(524288KiB)", max=HOTPLUG,
                              devices=VMEM.format(block=2, requested=1024)),
    "virtio-mem-block-pow2": R("block size must be a power of two", max=HOTPLUG,
                               devices=VMEM.format(block=3, requested=0)),
    "virtio-mem-block-missing": R("block size must be a power of two", max=HOTPLUG,
                                  devices=VMEM.format(block=2, requested=0).replace(
                                      "<block unit='MiB'>2</block>", "")),
    "virtio-mem-block-thp": R("block size too small, must be at least 2048KiB", max=HOTPLUG,
                              devices=VMEM.format(block=1, requested=0)),
    "virtio-mem-requested-multiple": R("requested size must be an integer multiple of block "
                                       "size", max=HOTPLUG,
                                       devices=VMEM.format(block=4, requested=2)),
    "sgx-address": R("memory device address is not supported for model 'sgx-epc'", max=HOTPLUG,
                     devices="<memory model='sgx-epc'><target><size unit='MiB'>64</size>"
                             "</target><address type='dimm' slot='0'/></memory>"),
    # --- <hugepages> <page> list -------------------------------------------------------------
    "pages-intersect": R("nodeset attribute of hugepages of sizes 1048576 and 2048 intersect",
                         backing="<memoryBacking><hugepages><page size='2' unit='M' "
                                 "nodeset='0'/><page size='1' unit='G' nodeset='0-1'/>"
                                 "</hugepages></memoryBacking>"),
    "pages-two-masters": R("two master hugepages detected: 1048576 and 2048",
                           backing="<memoryBacking><hugepages><page size='2' unit='M'/>"
                                   "<page size='1' unit='G'/></hugepages></memoryBacking>"),
    "pages-node-missing": R("hugepages: node 2 not found",
                            backing="<memoryBacking><hugepages><page size='2' unit='M' "
                                    "nodeset='2'/></hugepages></memoryBacking>"),
    "pages-node-missing-no-cells": R("hugepages: node 0 not found", cpu="",
                                     backing="<memoryBacking><hugepages><page size='2' "
                                             "unit='M' nodeset='0-1'/></hugepages>"
                                             "</memoryBacking>"),
    # --- at start (domxml-to-native is a pretend start) ------------------------------------
    "align-cell": R("memory size of NUMA node '0' overflowed after alignment", "start",
                    cpu="<cpu><numa><cell id='0' cpus='0-1' memory='9007199254740991'/>"
                        "</numa></cpu>"),
    "align-initial": R("initial memory size overflowed after alignment", "start", cpu="",
                       memory="<memory>9007199254740991</memory>"),
    "align-max": R("maximum memory size overflowed after alignment", "start",
                   max="<maxMemory slots='4'>9007199254740991</maxMemory>"),
    "align-module": R("size of memory module '0' overflowed after alignment", "start",
                      max="<maxMemory slots='4'>9007199254739968</maxMemory>",
                      cpu="<cpu><numa><cell id='0' cpus='0-1' memory='1'/></numa></cpu>",
                      devices="<memory model='dimm'><target><size>9007199254739892</size>"
                              "<node>0</node></target></memory>"),
    "host-node": R("NUMA node 1 is unavailable", "start",
                   numatune="<numatune><memory nodeset='1'/></numatune>"),
    "host-node-memnode": R("NUMA node 1 is unavailable", "start",
                           numatune="<numatune><memnode cellid='1' nodeset='0-1'/></numatune>"),
    "host-node-unused-memory-nodeset": R("NUMA node 1 is unavailable", "start",
                                         numatune="<numatune><memory nodeset='1'/>"
                                                  "<memnode cellid='0' nodeset='0'/>"
                                                  "<memnode cellid='1' nodeset='0'/>"
                                                  "</numatune>"),
    "host-node-nodemask": R("NUMA node 1 is unavailable", "start", max=HOTPLUG,
                            devices=DIMM.replace("<target>", "<source><nodemask>1</nodemask>"
                                                             "</source><target>")),
    "no-mount-size": R("Unable to find any usable hugetlbfs mount for 4096 KiB", "start",
                       ours="hugepage size 4096 KiB is not supported by this host",
                       backing="<memoryBacking><hugepages><page size='4' unit='M'/>"
                               "</hugepages></memoryBacking>"),
    "numad-advice": R("Advice from numad is needed in case of automatic numa placement",
                      "start", via="qemu-args",
                      numatune="<numatune><memory placement='auto'/></numatune>"),
}
