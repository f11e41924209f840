# Hand-written bash completers for the values hugexml's parser cannot know: this host's
# page sizes and NUMA nodes, libvirt URIs and domains. packaging/gen_docs.py puts them
# into the generated completion (shtab's preamble); each prints the candidates for $1.

_hugexml_page_sizes() {
  local d sizes=()
  for d in /sys/kernel/mm/hugepages/hugepages-*kB; do
    [ -d "$d" ] || continue
    d=${d##*hugepages-}; d=${d%kB}
    if ((d % 1048576 == 0)); then sizes+=("$((d / 1048576))G"); else sizes+=("$((d / 1024))M"); fi
  done
  compgen -W "${sizes[*]}" -- "$1"
}

_hugexml_page_sizes_auto() {
  compgen -W "auto largest" -- "$1"
  _hugexml_page_sizes "$1"
}

_hugexml_nodes() {
  local d nodes=()
  for d in /sys/devices/system/node/node[0-9]*; do
    [ -d "$d" ] && nodes+=("${d##*node}")
  done
  compgen -W "${nodes[*]}" -- "$1"
}

_hugexml_uris() {
  compgen -W "qemu:///system qemu:///session" -- "$1"
}

_hugexml_domains() {
  command -v virsh >/dev/null 2>&1 || return 0
  compgen -W "$(timeout 2 virsh -q list --all --name 2>/dev/null)" -- "$1"
}
