#!/usr/bin/env bash
# udmabuf-setup.sh: make real kernel buffers reachable for linuxdmabuf, then run its demo on them.
#
#   sudo ./udmabuf-setup.sh [--group NAME] [--no-demo]   set up (idempotent)
#   ./udmabuf-setup.sh --check                            report what is set up and what is missing; change nothing
#
# 1. Installs what the project needs: apt (QEMU, kmod, busybox-static, file, a C
#    compiler, python3-venv, debian-archive-keyring) and, in .venv, the package
#    with its test extras and virtme-ng.
# 2. On a host whose kernel has udmabuf/dma-heaps: loads udmabuf and installs a
#    udev rule giving group NAME (default video), never the world, access to
#    /dev/udmabuf and /dev/dma_heap/*. Where the kernel lacks them: prepares the
#    VM runner instead (the full kernel and Debian's 7.2 and 6.12 kernels, cached).
# 3. Runs `linuxdmabuf demo` on real buffers: on the host where possible, else in the VM.
set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
venv="$top/.venv"
group=video
mode=setup
demo=1
rules=/etc/udev/rules.d/70-linuxdmabuf.rules
apt_packages=(qemu-system-x86 kmod busybox-static file gcc libc6-dev python3-venv debian-archive-keyring util-linux)
kernels=full,debian-7.2,debian-6.12

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --check) mode=check ;;
        --group) group=${2:?--group needs a name}; shift ;;
        --group=*) group=${1#--group=} ;;
        --no-demo) demo=0 ;;
        -h|--help) usage 0 ;;
        *) echo "udmabuf-setup.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
    shift
done

say() { printf '%s\n' "$*"; }
ok() { printf '  [ok]      %s\n' "$*"; }
missing() { printf '  [missing] %s\n' "$*"; gaps=$((gaps + 1)); }
gaps=0

host_has_devices() { [ -e /dev/udmabuf ] || [ -d /dev/dma_heap ]; }

check() {
    say "linuxdmabuf set-up check ($(uname -r), $top)"
    local p
    for p in "${apt_packages[@]}"; do
        if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then ok "apt: $p"
        else missing "apt: $p"; fi
    done
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import linuxdmabuf' 2>/dev/null; then
        ok "venv: $venv with linuxdmabuf $("$venv/bin/python" -c 'import linuxdmabuf; print(linuxdmabuf.__version__)')"
    else missing "venv: $venv with linuxdmabuf (pip install -e '.[test]')"; fi
    if [ -x "$venv/bin/vng" ]; then ok "virtme-ng: $("$venv/bin/vng" --version 2>/dev/null)"; else missing "virtme-ng in $venv"; fi
    if host_has_devices; then
        ok "host kernel has dma-buf devices: $(ls -d /dev/udmabuf /dev/dma_heap/* 2>/dev/null | tr '\n' ' ')"
        if [ -f "$rules" ]; then ok "udev rule $rules"; else missing "udev rule $rules (group access)"; fi
    else
        say "  [info]    host kernel has no udmabuf and no dma-heaps: kernel-level work runs in the VM"
        if [ -x "$venv/bin/python" ]; then
            local spec image
            for spec in ${kernels//,/ }; do
                if image=$(cd "$top" && PATH="$venv/bin:$PATH" "$venv/bin/python" -c "
import sys
from linuxdmabuf.vm.kernels import resolve
print(resolve(sys.argv[1], fetch=False).image)" "$spec" 2>/dev/null); then ok "VM kernel $spec: $image"
                else missing "VM kernel $spec (linuxdmabuf vm --fetch --kernel $spec)"; fi
            done
        fi
        if [ -e /dev/kvm ]; then say "  [info]    /dev/kvm present: the runner probes whether KVM works, else uses TCG"
        else say "  [info]    no /dev/kvm: the VM runs under TCG emulation"; fi
    fi
    if [ "$gaps" -eq 0 ]; then say "everything is set up"; else say "$gaps thing(s) missing: run sudo $0"; fi
    [ "$gaps" -eq 0 ]
}

install_apt() {
    local need=() p
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -eq 0 ]; then say "apt: everything already installed"; return; fi
    say "apt: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

install_venv() {
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    say "pip: installing linuxdmabuf[test] (editable) and virtme-ng into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$top[test]"
}

setup_host() {
    # The real-host path: the kernel has the devices; give a group access to them.
    modprobe udmabuf 2>/dev/null || true
    getent group "$group" >/dev/null || groupadd --system "$group"
    cat > "$rules.tmp" <<EOF
# Installed by linuxdmabuf's udmabuf-setup.sh: group $group may use udmabuf and dma-heaps.
KERNEL=="udmabuf", SUBSYSTEM=="misc", GROUP="$group", MODE="0660"
SUBSYSTEM=="dma_heap", GROUP="$group", MODE="0660"
EOF
    mv "$rules.tmp" "$rules"
    if command -v udevadm >/dev/null; then
        udevadm control --reload || true
        udevadm trigger --subsystem-match=misc --subsystem-match=dma_heap || true
    fi
    say "host: udev rule $rules gives group $group (not the world) access"
}

setup_vm() {
    say "host kernel has no udmabuf/dma-heaps: preparing the VM runner (kernels: $kernels)"
    (cd "$top" && PATH="$venv/bin:$PATH" "$venv/bin/python" -m linuxdmabuf vm --fetch --kernel "$kernels")
}

run_demo() {
    if host_has_devices && "$venv/bin/python" -m linuxdmabuf demo; then
        say "demo: ran on this host's kernel ($(uname -r))"
    elif ! host_has_devices; then
        say "demo: running inside the VM (full kernel), since this host's kernel has no dma-buf devices"
        "$top/tools/vm-run" --kernel full -- "$venv/bin/python" -m linuxdmabuf demo
        say "demo: ran inside the VM"
    else
        say "demo: failed on the host: see \`$venv/bin/python -m linuxdmabuf info\`" >&2
        return 1
    fi
}

fetch_headers() {
    # The header-layout test compiles against the newest uAPI headers.
    "$venv/bin/python" "$top/tools/uapi-headers" --fetch >/dev/null \
        && say "uAPI headers: $("$venv/bin/python" "$top/tools/uapi-headers")" \
        || say "uAPI headers: could not fetch Debian's newest linux-libc-dev; the layout test will use /usr/include"
}

if [ "$mode" = check ]; then check; exit $?; fi
[ "$(id -u)" -eq 0 ] || { echo "udmabuf-setup.sh: run as root (sudo $0), or use --check" >&2; exit 1; }
install_apt
install_venv
fetch_headers
if host_has_devices || modprobe -q udmabuf 2>/dev/null; then setup_host; else setup_vm; fi
if [ "$demo" -eq 1 ]; then run_demo; fi
say "set-up complete"
