#!/usr/bin/env bash
# udmabuf-setup.sh: make real kernel buffers reachable for linuxdmabuf, then run its demo on them.
#
#   sudo ./udmabuf-setup.sh [--group NAME] [--size-limit-mb N] [--no-demo]   set up (idempotent)
#   sudo ./udmabuf-setup.sh --devices-only [--group NAME] [--size-limit-mb N] only step 2, on a real host
#   sudo ./udmabuf-setup.sh --uninstall       undo exactly what step 2 changed (recorded in its state file)
#   ./udmabuf-setup.sh --check [--devices-only]  report what is set up and what is missing; change nothing
#
# 1. Installs what the project needs: apt (QEMU for x86_64 and arm64 guests,
#    qemu-user-static, mmdebstrap for the foreign guests' userlands, kmod,
#    busybox-static, file, a C compiler and the cross compilers of the layout
#    proof, python3-venv, debian-archive-keyring, valgrind) and, in .venv, the
#    package with its test extras and virtme-ng.
# 2. On a host whose kernel has udmabuf/dma-heaps: loads udmabuf, installs a udev
#    rule giving group NAME (default video; created if missing), never the world,
#    access to /dev/udmabuf and /dev/dma_heap/*, adds the invoking user ($SUDO_USER)
#    to that group, optionally sets udmabuf's size_limit_mb now and at boot, then
#    allocates from every device as that user to prove it works. What it changed
#    is recorded in /var/lib/linuxdmabuf/udmabuf-setup.state for --uninstall.
#    Where the kernel lacks them: prepares the VM runner instead (the full kernel
#    and Debian's 7.2 and 6.12 kernels, the arm64 ones, and the Debian userlands
#    of the arm64, armhf and i386 guests, cached).
# 3. Runs `linuxdmabuf demo` on real buffers: on the host where possible, else in the VM.
set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
venv="$top/.venv"
group=video
mode=setup
demo=1
rules=/etc/udev/rules.d/70-linuxdmabuf.rules
apt_packages=(qemu-system-x86 kmod busybox-static file gcc libc6-dev python3-venv debian-archive-keyring util-linux
              valgrind qemu-system-arm qemu-user-static mmdebstrap
              gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
              gcc-i686-linux-gnu libc6-dev-i386-cross)
kernels=full,debian-7.2,debian-6.12
devices_only=0
group_given=0
size_limit=
state_dir=/var/lib/linuxdmabuf
state=$state_dir/udmabuf-setup.state
modprobe_conf=/etc/modprobe.d/linuxdmabuf-udmabuf.conf
size_param=/sys/module/udmabuf/parameters/size_limit_mb

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --check) mode=check ;;
        --group) group=${2:?--group needs a name}; group_given=1; shift ;;
        --group=*) group=${1#--group=}; group_given=1 ;;
        --no-demo) demo=0 ;;
        --devices-only) devices_only=1 ;;
        --size-limit-mb) size_limit=${2:?--size-limit-mb needs a number of MiB}; shift ;;
        --size-limit-mb=*) size_limit=${1#--size-limit-mb=} ;;
        --uninstall) mode=uninstall ;;
        -h|--help) usage 0 ;;
        *) echo "udmabuf-setup.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
    shift
done

if ! [[ "$group" =~ ^[a-z_][a-z0-9_-]*$ ]] || [ "$group" = root ]; then
    echo "udmabuf-setup.sh: --group must name a group other than root (lowercase letters, digits, _ and -), not '$group'" >&2
    exit 2
fi
if [ -n "$size_limit" ] && ! [[ "$size_limit" =~ ^[1-9][0-9]{0,6}$ ]]; then
    echo "udmabuf-setup.sh: --size-limit-mb takes a whole number of MiB from 1 to 9999999, not '$size_limit'" >&2
    exit 2
fi

say() { printf '%s\n' "$*"; }
ok() { printf '  [ok]      %s\n' "$*"; }
missing() { printf '  [missing] %s\n' "$*"; gaps=$((gaps + 1)); }
gaps=0

host_has_devices() { [ -e /dev/udmabuf ] || [ -d /dev/dma_heap ]; }

# The devices as they are now: the rule, each node's group and mode, the user's
# groups, the size limit, and an allocation as the user (never trusting the state file).
check_devices() {
    local node user
    ok "host kernel has dma-buf devices: $(device_nodes | paste -sd ' ' -)"
    if [ -f "$state" ] && [ "$group_given" -eq 0 ]; then group=$(state_get group "$group"); fi
    if [ -f "$rules" ] && grep -q "^KERNEL==\"udmabuf\", SUBSYSTEM==\"misc\", GROUP=\"$group\", MODE=\"0660\"$" "$rules"; then
        ok "udev rule $rules (group $group)"
    else missing "udev rule $rules giving group $group access (sudo $0 --devices-only --group $group)"; fi
    if getent group "$group" >/dev/null; then ok "group $group exists"; else missing "group $group"; fi
    for node in $(device_nodes); do
        read -r _ gid perm <<<"$(stat -c '%u %g %a' "$node")"
        if (( 8#$perm & 8#002 )); then missing "$node is world-writable ($perm): the udev rule must not allow that"
        elif [ "$(getent group "$gid" | cut -d: -f1)" = "$group" ] && (( (8#$perm & 8#060) == 8#060 )); then
            ok "$node: group $group, mode $perm"
        else missing "$node: group $(getent group "$gid" | cut -d: -f1 || echo "$gid"), mode $perm (want group $group, 660)"; fi
    done
    [ -r "$size_param" ] && say "  [info]    udmabuf size_limit_mb=$(cat "$size_param")"
    user=$(invoking_user)
    if [ -n "$user" ]; then
        if id -nG "$user" | tr ' ' '\n' | grep -qx "$group"; then ok "user $user is in group $group"
        else missing "user $user in group $group (sudo usermod -aG $group $user, then log in again)"; fi
        if verify_as "$user" >/dev/null 2>&1; then ok "user $user can allocate from every device"
        else missing "allocation as user $user (details: sudo $0 --devices-only)"; fi
    fi
}

check() {
    say "linuxdmabuf set-up check ($(uname -r), $top)"
    if [ "$devices_only" -eq 1 ]; then
        if host_has_devices; then check_devices; else missing "dma-buf devices: this kernel has no udmabuf and no dma-heaps"; fi
        if [ "$gaps" -eq 0 ]; then say "devices are set up"; else say "$gaps thing(s) missing"; fi
        [ "$gaps" -eq 0 ]
        return
    fi
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
        check_devices
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

# -- the real-host path: state file, set-up, verification, uninstall -------------------------
# The state file has one "key value..." line per thing changed, written before the
# change; a key already present keeps its first value (what the system had before).
state_get() { local v; v=$(awk -v k="$1" '$1 == k { sub(/^[^ ]+ /, ""); print; exit }' "$state" 2>/dev/null); printf '%s' "${v:-${2:-}}"; }
state_has() { [ -f "$state" ] && awk -v k="$1" -v v="${2:-}" '$1 == k && (v == "" || $2 == v) { f = 1 } END { exit !f }' "$state"; }
state_add() { state_has "$1" "${2:-}" || printf '%s\n' "$*" >> "$state"; }

device_nodes() { ls -d /dev/udmabuf /dev/dma_heap/* 2>/dev/null || true; }
invoking_user() { local u=${SUDO_USER:-}; [ -n "$u" ] && [ "$u" != root ] && printf '%s' "$u"; return 0; }
udevd_running() { command -v udevadm >/dev/null && udevadm control --ping >/dev/null 2>&1; }

make_dir() {  # mkdir -p, recording each directory it creates (outermost first)
    local d=$1 missing_dirs=()
    while [ ! -d "$d" ]; do missing_dirs=("$d" "${missing_dirs[@]}"); d=$(dirname "$d"); done
    for d in "${missing_dirs[@]}"; do mkdir "$d"; state_add created_dir "$d"; done
}

write_file() {  # write_file PATH: stdin into PATH, keeping the file it replaces for --uninstall
    local path=$1 backup
    if ! state_has file "$path"; then
        if [ -e "$path" ]; then
            backup="$state_dir/backup.$(basename "$path")"
            cp -p "$path" "$backup"
            state_add file "$path" "$backup"
        else
            state_add file "$path" -
        fi
    fi
    make_dir "$(dirname "$path")"
    cat > "$path.tmp"
    chmod 0644 "$path.tmp"
    mv "$path.tmp" "$path"
}

# Allocate one page from every device as USER, with the groups /etc/group gives it now.
verify_as() {
    local user=$1 py rc
    for py in "$venv/bin/python" python3; do
        command -v "$py" >/dev/null || continue
        rc=0
        (cd / && setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$py" -c '
import os, sys
try:
    import linuxdmabuf
except ImportError:
    sys.exit(3)
targets = [("udmabuf", linuxdmabuf.Udmabuf)] if os.path.exists("/dev/udmabuf") else []
targets += [("dma-heap " + n, lambda n=n: linuxdmabuf.Heap(n)) for n in linuxdmabuf.Heap.available()]
failed = 0
for label, open_device in targets:
    try:
        with open_device() as device, device.allocate(4096):
            print("  [ok]      %s: %s allocated a dma-buf" % (label, sys.argv[1]))
    except OSError as e:
        failed += 1
        print("  [failed]  %s: %s: %s" % (label, sys.argv[1], e))
sys.exit(1 if failed or not targets else 0)' "$user") || rc=$?
        [ "$rc" -eq 3 ] || return "$rc"
    done
    say "  [skipped] no Python with linuxdmabuf that $user can run: cannot verify (pip install linuxdmabuf)"
    return 2
}

load_udmabuf() {
    [ -e /dev/udmabuf ] && return 0
    [ -d /sys/module/udmabuf ] && return 1  # built in or loaded, yet no node: nothing a module load fixes
    if modprobe -q udmabuf 2>/dev/null; then
        make_dir "$state_dir"
        state_add loaded_module udmabuf
        udevadm settle --timeout=10 2>/dev/null || sleep 1
        return 0
    fi
    return 1
}

setup_host() {
    # The real-host path: the kernel has the devices; give a group access to them.
    local node user before rc
    if [ -f "$state" ] && [ "$(state_get group)" != "$group" ]; then
        echo "udmabuf-setup.sh: already set up for group $(state_get group): run $0 --uninstall first" >&2
        return 1
    fi
    make_dir "$state_dir"
    load_udmabuf || true
    state_add group "$group"
    if ! getent group "$group" >/dev/null; then
        state_add created_group "$group"
        groupadd --system "$group"
        say "host: created group $group"
    fi
    user=$(invoking_user)
    if [ -n "$user" ] && ! id -nG "$user" | tr ' ' '\n' | grep -qx "$group"; then
        state_add added_user "$user" "$group"
        gpasswd -a "$user" "$group" >/dev/null
        say "host: added $user to group $group (log in again for your sessions to have it)"
    fi
    for node in $(device_nodes); do
        state_has node "$node" || state_add node "$node" "$(stat -c '%u %g %a' "$node")"
    done
    {
        sed "s/@GROUP@/$group/g" "$top/linuxdmabuf/data/70-linuxdmabuf.rules"
        if [ -n "$size_limit" ] && [ ! -e /sys/module/udmabuf/initstate ]; then
            # udmabuf is built in, so no modprobe options: set the parameter when udev adds the device at boot.
            cat <<EOF
ACTION=="add", KERNEL=="udmabuf", SUBSYSTEM=="misc", RUN+="/bin/sh -c 'echo $size_limit > $size_param'"
EOF
        fi
    } | write_file "$rules"
    local udev=0
    if udevd_running; then
        udev=1
        udevadm control --reload
        udevadm trigger --action=change --subsystem-match=dma_heap
        udevadm trigger --action=change --subsystem-match=misc --sysname-match=udmabuf
        udevadm settle --timeout=30 || true
        say "host: udevd reloaded its rules and re-applied them to the devices"
    else
        say "host: udevd is not running: applying the rule to the current nodes by hand (udev applies it from the next boot)"
    fi
    for node in $(device_nodes); do  # where udev did not (or cannot), set what the rule says
        read -r _ gid perm <<<"$(stat -c '%u %g %a' "$node")"
        if [ "$(getent group "$gid" | cut -d: -f1)" != "$group" ] || [ "$perm" != 660 ]; then
            [ "$udev" -eq 0 ] || say "host: udevd did not apply the rule to $node ($gid, $perm): setting it by hand"
            chgrp "$group" "$node"
            chmod 0660 "$node"
        fi
        if (( 8#$(stat -c '%a' "$node") & 8#002 )); then
            echo "udmabuf-setup.sh: $node is world-writable; refusing to leave it so" >&2
            chmod o-rwx "$node"
            return 1
        fi
    done
    if [ -n "$size_limit" ]; then
        if [ ! -w "$size_param" ]; then
            echo "udmabuf-setup.sh: --size-limit-mb: no $size_param (is udmabuf loaded?)" >&2
            return 1
        fi
        state_has size_limit_mb || state_add size_limit_mb "$(cat "$size_param")"
        echo "$size_limit" > "$size_param"
        if [ -e /sys/module/udmabuf/initstate ]; then
            echo "options udmabuf size_limit_mb=$size_limit" | write_file "$modprobe_conf"
            say "host: udmabuf size_limit_mb=$size_limit now and at every load ($modprobe_conf)"
        else
            say "host: udmabuf size_limit_mb=$size_limit now and at every boot (udmabuf is built in: the udev rule sets it)"
        fi
    fi
    say "host: udev rule $rules gives group $group (not the world) access"
    if [ -n "$user" ]; then
        say "host: allocating as $user:"
        rc=0
        verify_as "$user" || rc=$?
        if [ "$rc" -eq 1 ]; then
            echo "udmabuf-setup.sh: $user cannot allocate from every device (see above)" >&2
            return 1
        fi
    else
        say "host: run this with sudo from your own account to have it add you to group $group and check you can allocate"
    fi
}

uninstall_host() {
    local key a b c gid perm members dirs d
    if [ ! -f "$state" ]; then
        say "uninstall: nothing to undo ($state does not exist)"
        return 0
    fi
    group=$(state_get group "$group")
    while read -r -u 3 key a b; do  # files first: the udev rule and modprobe options
        [ "$key" = file ] || continue
        if [ "$b" = - ]; then rm -f "$a"; say "uninstall: removed $a"
        else mv "$b" "$a"; say "uninstall: restored the previous $a"; fi
    done 3< "$state"
    if udevd_running; then
        udevadm control --reload
        udevadm trigger --action=change --subsystem-match=dma_heap
        udevadm trigger --action=change --subsystem-match=misc --sysname-match=udmabuf
        udevadm settle --timeout=30 || true
    fi
    while read -r -u 3 key a b c perm; do
        case "$key" in
            node)  # "node PATH UID GID MODE" as it was before
                gid=$c
                if [ -e "$a" ]; then chown "$b:$gid" "$a"; chmod "$perm" "$a"; say "uninstall: $a back to $b:$gid $perm"; fi ;;
            size_limit_mb)
                if [ -w "$size_param" ]; then echo "$a" > "$size_param"; say "uninstall: udmabuf size_limit_mb back to $a"; fi ;;
            added_user)
                gpasswd -d "$a" "$b" >/dev/null && say "uninstall: removed $a from group $b" ;;
        esac
    done 3< "$state"
    if state_has created_group; then
        members=$(getent group "$group" | cut -d: -f4)
        if [ -z "$members" ]; then groupdel "$group" && say "uninstall: deleted group $group"
        else say "uninstall: kept group $group, which has members now: $members"; fi
    fi
    if state_has loaded_module; then
        modprobe -r udmabuf 2>/dev/null && say "uninstall: unloaded udmabuf" || say "uninstall: udmabuf is in use: left loaded"
    fi
    dirs=$(awk '$1 == "created_dir" { print $2 }' "$state" | tac)
    rm -f "$state"
    for d in $dirs; do  # innermost first; only if nothing else was put there since
        rmdir "$d" 2>/dev/null && say "uninstall: removed $d" || say "uninstall: kept $d, which is not empty"
    done
    say "uninstall complete"
}

setup_vm() {
    say "host kernel has no udmabuf/dma-heaps: preparing the VM runner (kernels: $kernels)"
    (cd "$top" && PATH="$venv/bin:$PATH" "$venv/bin/python" -m linuxdmabuf vm --fetch --kernel "$kernels")
    # The other guest architectures of the test matrix: arm64's kernels, each one's Debian userland.
    say "preparing the arm64, armhf and i386 guests (their kernels and Debian userlands, cached)"
    local arch
    for arch in arm64:full,debian-7.2 armhf:full i386:full; do
        (cd "$top" && PATH="$venv/bin:$PATH" "$venv/bin/python" -m linuxdmabuf vm --fetch --arch "${arch%%:*}" \
            --kernel "${arch#*:}")
    done
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
if [ "$mode" = uninstall ]; then uninstall_host; exit $?; fi
if [ "$devices_only" -eq 1 ]; then
    if ! host_has_devices && ! load_udmabuf; then
        echo "udmabuf-setup.sh: this kernel ($(uname -r)) has no udmabuf and no dma-heaps: see \`python -m linuxdmabuf info\`" >&2
        exit 1
    fi
    setup_host
    say "device set-up complete"
    exit 0
fi
install_apt
install_venv
fetch_headers
if host_has_devices || load_udmabuf; then setup_host; else setup_vm; fi
if [ "$demo" -eq 1 ]; then run_demo; fi
say "set-up complete"
