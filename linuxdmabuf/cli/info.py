"""``linuxdmabuf info``: what this kernel offers and this user may use, with the fix for what is missing.

The kernel release; each dma-heap with its device node's owner, group and
mode, whether this user can open it and allocate from it, and its kind
(system or CMA, discovered by allocating, not guessed from the name);
udmabuf's node, access and module limits; sw_sync and debugfs; the features
probe; then, for everything missing or denied, the exact fix: the kernel
option, the module to load, the group to join or the udev rule to install.
Exit status 0 if this user can allocate a dma-buf from some provider, 1 if not.
"""
import argparse
import errno
import grp
import gzip
import json
import os
import pwd
import stat
import sys

from ._tools import group_name, stdout_closed_ok, user_name

RULES_FILE = "/etc/udev/rules.d/70-linuxdmabuf.rules"
SETUP = "sudo ./udmabuf-setup.sh --devices-only --group video (from linuxdmabuf's source tree)"


RULES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "70-linuxdmabuf.rules")


def udev_rule(device: str, group: str = "video") -> str:
    """The udev rule udmabuf-setup.sh writes to let `group` (not the world) open `device`
    ("udmabuf", or a heap: the dma_heap rule), from the one rules file it installs."""
    with open(RULES) as f:
        rules = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    key = 'KERNEL=="udmabuf"' if device == "udmabuf" else 'SUBSYSTEM=="dma_heap"'
    [rule] = [r for r in rules if r.startswith(key)]
    return rule.replace("@GROUP@", group)


def parse_kernel_config(text: str) -> dict:
    """A kernel .config: "CONFIG_X" -> "y", "m", "n" or the value given."""
    options = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            options[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:-len(" is not set")]] = "n"
    return options


def kernel_config() -> tuple:
    """(options, source) of the running kernel's configuration, or ({}, None) if unreadable.

    From /proc/config.gz (CONFIG_IKCONFIG_PROC) or the file distributions
    install beside the kernel.
    """
    release = os.uname().release
    for path in ("/proc/config.gz", f"/boot/config-{release}", f"/lib/modules/{release}/config",
                 f"/usr/lib/modules/{release}/config"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                return parse_kernel_config(f.read()), path
        except OSError:
            continue
    return {}, None


def _node(path: str) -> dict:
    """A device node's owner, group, mode and who besides root may open it."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    group = group_name(st.st_gid)
    if mode & stat.S_IROTH:
        others = "everyone" + (" (world-writable!)" if mode & stat.S_IWOTH else "")
    elif mode & stat.S_IRGRP and st.st_gid != 0:
        others = f"group {group}"
    else:
        others = "root only"
    try:
        acl = "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        acl = False
    if acl:
        others += " + ACL"
    return {"path": path, "owner": user_name(st.st_uid), "group": group, "mode": f"{mode:04o}",
            "filemode": stat.filemode(st.st_mode), "others": others, "acl": acl}


def access_fix(path: str) -> str:
    """What lets this user open the device node `path`, judged from its group and mode.

    The text names no path, so that one fix serves every node it applies to.
    """
    st = os.stat(path)
    user = user_name(os.geteuid())
    group = group_name(st.st_gid)
    if st.st_gid != 0 and st.st_mode & stat.S_IRGRP:
        if st.st_gid in os.getgroups() or st.st_gid == os.getegid():
            return (f"this process is in group {group}, which may open it, and is still refused: an ACL or a "
                    "security module denies it (see getfacl and the audit log)")
        try:
            member = user in grp.getgrgid(st.st_gid).gr_mem or pwd.getpwnam(user).pw_gid == st.st_gid
        except KeyError:
            member = False
        if member:
            return (f"you are in group {group}, which may open it, but this login session started before "
                    f"you were added: log out and in again (or run `newgrp {group}`)")
        return f"join group {group}, which may open it: sudo usermod -aG {group} {user}, then log in again"
    return (f"give a group access with udev rules: {SETUP} writes {RULES_FILE} with `{udev_rule('udmabuf')}` "
            f"and `{udev_rule('dma_heap')}` and adds you to group video; log in again afterwards")


def _short(error) -> str | None:
    """An OSError as the kernel's words ("Permission denied"), without the library's advice."""
    if error is None:
        return None
    return os.strerror(error.errno) if error.errno else str(error)


def _try(call) -> tuple:
    """(result, None) or (None, the OSError)."""
    try:
        return call(), None
    except OSError as e:
        return None, e


def _probe_device(open_device) -> dict:
    """Open the device, allocate one page from it, close both."""
    import linuxdmabuf

    from .._uapi import PAGE_SIZE

    device, error = _try(open_device)
    found = {"can_open": device is not None, "can_allocate": False, "kind": None,
             "denied": isinstance(error, PermissionError), "error": _short(error)}
    if device is None:
        return found
    with device:
        buf, error = _try(lambda: device.allocate(PAGE_SIZE))
        found["error"] = _short(error)
        if buf is not None:
            buf.close()
            found["can_allocate"] = True
            if isinstance(device, linuxdmabuf.Heap):
                found["kind"] = device.kind
    return found


def _module_state(name: str, config_key: str, config: dict) -> str:
    """"built in", "module, loaded", "module, not loaded", "not in this kernel" or "unknown".

    /sys/module/<name> exists for a loaded module (with an initstate file)
    and for a built-in one that has parameters (without); modules.dep lists
    the modules that can be loaded.
    """
    if os.path.isdir(f"/sys/module/{name}"):
        return "module, loaded" if os.path.exists(f"/sys/module/{name}/initstate") else "built in"
    value = config.get(config_key)
    if value == "m" or _loadable(name):
        return "module, not loaded"
    if value == "y":
        return "built in"
    return "not in this kernel" if config else "unknown"


def _loadable(name: str) -> bool:
    try:
        with open(f"/lib/modules/{os.uname().release}/modules.dep") as f:
            return any(line.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko")[0] == name for line in f)
    except OSError:
        return False


def collect() -> dict:
    """Everything info reports, as one JSON-ready document."""
    import linuxdmabuf
    from linuxdmabuf._mounts import debugfs_mount
    from linuxdmabuf.heap import HEAP_DIR
    from linuxdmabuf.swsync import sw_sync_path
    from linuxdmabuf.udmabuf import DEVICE

    config, config_source = kernel_config()
    fixes = []

    def fix(problem, remedy, blocking=False, paths=()):
        fixes.append({"problem": problem, "fix": remedy, "blocks_allocation": blocking, "paths": list(paths)})

    denied: dict[str, list] = {}  # remedy -> device nodes: one fix for all the nodes it serves
    root_only: dict[str, list] = {}

    heaps = []
    for name in linuxdmabuf.Heap.available():
        path = os.path.join(HEAP_DIR, name)
        entry = {"name": name, **_node(path), **_probe_device(lambda name=name: linuxdmabuf.Heap(name))}
        heaps.append(entry)
    if not os.path.isdir(HEAP_DIR):
        state = config.get("CONFIG_DMABUF_HEAPS")
        remedy = ("a kernel built with CONFIG_DMABUF_HEAPS=y and CONFIG_DMABUF_HEAPS_SYSTEM=y (Linux 5.6+)"
                  if state in (None, "n") else
                  "modprobe system_heap" if config.get("CONFIG_DMABUF_HEAPS_SYSTEM") == "m" else
                  "CONFIG_DMABUF_HEAPS_SYSTEM=y in the kernel configuration")
        fix(f"no dma-heaps: {HEAP_DIR} does not exist", remedy, blocking=True)
    elif not heaps:
        fix(f"{HEAP_DIR} is empty", "modprobe system_heap, or CONFIG_DMABUF_HEAPS_SYSTEM=y", blocking=True)
    for heap in heaps:
        if heap["denied"]:
            denied.setdefault(access_fix(heap["path"]), []).append(heap["path"])
        elif not heap["can_open"]:
            fix(f"{heap['path']} does not open: {heap['error']}", "see the kernel log (dmesg)", True, [heap["path"]])
        elif not heap["can_allocate"]:
            fix(f"{heap['path']} opens but does not allocate a page: {heap['error']}",
                "a CMA heap needs free CMA memory (CmaFree in /proc/meminfo); otherwise see the kernel log (dmesg)",
                paths=[heap["path"]])
        elif os.geteuid() == 0 and heap["others"] == "root only":
            root_only.setdefault(access_fix(heap["path"]), []).append(heap["path"])
    if heaps and not any(h["kind"] == "cma" for h in heaps) and all(h["can_open"] for h in heaps):
        cma_total = _meminfo("CmaTotal")
        if config.get("CONFIG_DMABUF_HEAPS_CMA") in ("y", "m") and not cma_total:
            fix("no CMA heap: the kernel has CONFIG_DMABUF_HEAPS_CMA but no CMA area",
                "reserve one: cma=64M on the kernel command line (or a reusable shared-dma-pool in the device tree)")
        else:
            fix("no CMA heap (physically contiguous buffers)",
                "a kernel with CONFIG_DMABUF_HEAPS_CMA=y and a CMA area (cma=64M on the command line)")

    udmabuf = {"path": DEVICE, "present": os.path.exists(DEVICE),
               "module": _module_state("udmabuf", "CONFIG_UDMABUF", config),
               "limits": linuxdmabuf.Udmabuf.limits()}
    if udmabuf["present"]:
        udmabuf.update(_node(DEVICE))
        udmabuf.update(_probe_device(linuxdmabuf.Udmabuf))
        if udmabuf["denied"]:
            denied.setdefault(access_fix(DEVICE), []).append(DEVICE)
        elif not udmabuf["can_open"]:
            fix(f"{DEVICE} does not open: {udmabuf['error']}", "see the kernel log (dmesg)", True, [DEVICE])
        elif not udmabuf["can_allocate"]:
            fix(f"{DEVICE} opens but does not allocate a page: {udmabuf['error']}",
                "check free memory, memfd_create and the kernel log (dmesg)", True, [DEVICE])
        elif os.geteuid() == 0 and udmabuf["others"] == "root only":
            root_only.setdefault(access_fix(DEVICE), []).append(DEVICE)
    elif udmabuf["module"] == "module, not loaded":
        fix(f"no {DEVICE}: the udmabuf module is not loaded",
            f"sudo modprobe udmabuf (or {SETUP}, which also grants access)", blocking=True)
    elif udmabuf["module"] in ("built in", "module, loaded"):
        fix(f"udmabuf is in the kernel but {DEVICE} is missing", "mount devtmpfs on /dev (or let udev create it)",
            blocking=True)
    else:
        fix(f"no {DEVICE}: this kernel has no udmabuf", "a kernel with CONFIG_UDMABUF=y (Linux 4.20+)",
            blocking=True)

    for remedy, paths in denied.items():
        fix(f"this user may not open {', '.join(paths)} (Permission denied)", remedy, True, paths)
    for remedy, paths in root_only.items():
        fix(f"only root may open {', '.join(paths)}", remedy, False, paths)

    mount = debugfs_mount()
    bufinfo = os.path.join(mount, "dma_buf", "bufinfo") if mount else None
    debugfs = {"mounted": mount, "bufinfo": bufinfo, "bufinfo_readable": bool(bufinfo and os.access(bufinfo, os.R_OK))}
    if mount is None:
        fix("debugfs is not mounted (sw_sync and dma_buf/bufinfo live there)",
            "sudo mount -t debugfs none /sys/kernel/debug")
    elif not debugfs["bufinfo_readable"]:
        fix("this user cannot read debugfs dma_buf/bufinfo (dump then sees only buffers of processes it may inspect)",
            "run dump as root" if os.geteuid() else "a kernel with CONFIG_DEBUG_FS=y")
    sw_sync: dict = {"path": None, "can_open": False, "error": None}
    try:
        sw_sync["path"] = sw_sync_path()
        linuxdmabuf.SwSyncTimeline().close()
        sw_sync["can_open"] = True
    except OSError as e:
        sw_sync["error"] = e.strerror
        if mount is not None:
            if e.errno == errno.EACCES:
                remedy = "sw_sync lives in debugfs, which only root may use: run fence tests as root"
            else:
                remedy = ("a kernel with CONFIG_SW_SYNC=y (needs CONFIG_SYNC_FILE and CONFIG_DEBUG_FS); "
                          "for tests only: its fences are signaled from userspace")
            fix(f"no sw_sync: {e.strerror}", remedy)

    drm = _drm_nodes()
    if drm and not any(n.get("syncobj_timeline") for n in drm) and not any(n.get("denied") for n in drm):
        fix("no DRM device with sync object timelines (linuxdmabuf.syncobj)",
            "a driver with DRM_CAP_SYNCOBJ_TIMELINE: virtio_gpu (QEMU: -device virtio-gpu-pci), i915, xe, amdgpu, "
            "msm, panfrost...; vgem and vkms have none")

    from linuxdmabuf import cma

    cma_areas = []
    for a in cma.areas(holders=False):
        entry = a.as_dict()
        entry.pop("bitmap")
        entry.pop("holders")
        cma_areas.append(entry)
    cma_doc = {"meminfo": cma.meminfo(), "areas": cma_areas, "none_because": None if cma_areas else cma.why_no_areas()}

    features = linuxdmabuf.features()
    providers = [h["name"] for h in heaps if h["can_allocate"]] + (["udmabuf"] if udmabuf.get("can_allocate") else [])
    if providers:  # something allocates (udmabuf on a kernel without dma-heaps, as Debian's arm64): nothing blocks
        for f in fixes:
            f["blocks_allocation"] = False
    if providers and not features["export_sync_file"]:
        fix("no DMA_BUF_IOCTL_EXPORT_SYNC_FILE/IMPORT_SYNC_FILE", "Linux 6.0 or later")
    if providers and not features["set_deadline"]:
        fix("no SYNC_IOC_SET_DEADLINE", "Linux 6.3 or later")
    return {
        "linuxdmabuf": linuxdmabuf.__version__,
        "kernel": os.uname().release,
        "kernel_config": config_source,
        "user": {"uid": os.geteuid(), "name": user_name(os.geteuid()),
                 "groups": sorted({group_name(g) for g in os.getgroups()})},
        "dma_heap": {"path": HEAP_DIR, "present": os.path.isdir(HEAP_DIR), "heaps": heaps},
        "udmabuf": udmabuf,
        "sw_sync": sw_sync,
        "debugfs": debugfs,
        "drm": drm,
        "cma": cma_doc,
        "features": features,
        "can_allocate": bool(providers),
        "providers": providers,
        "fixes": fixes,
    }


def _drm_nodes() -> list:
    """Each /dev/dri node: its driver, PRIME import/export (DRM_CAP_PRIME) and sync objects (DRM_CAP_SYNCOBJ,
    DRM_CAP_SYNCOBJ_TIMELINE), as DRM_IOCTL_VERSION and DRM_IOCTL_GET_CAP answer them."""
    import glob

    from linuxdmabuf import _uapi
    from linuxdmabuf.drm import DrmDevice, _node_number
    from linuxdmabuf.syncobj import _cap

    nodes = []
    for path in sorted(glob.glob("/dev/dri/card*"), key=_node_number) + \
            sorted(glob.glob("/dev/dri/renderD*"), key=_node_number):
        node: dict = {"path": path, "driver": None, "denied": False, "error": None}
        try:
            with DrmDevice(path) as device:
                prime = _cap(device, _uapi.DRM_CAP_PRIME)
                node.update(driver=device.driver, prime_import=bool(prime & _uapi.DRM_PRIME_CAP_IMPORT),
                            prime_export=bool(prime & _uapi.DRM_PRIME_CAP_EXPORT),
                            syncobj=bool(_cap(device, _uapi.DRM_CAP_SYNCOBJ)),
                            syncobj_timeline=bool(_cap(device, _uapi.DRM_CAP_SYNCOBJ_TIMELINE)))
        except PermissionError as e:
            node.update(denied=True, error=e.strerror)
        except OSError as e:
            node["error"] = e.strerror
        nodes.append(node)
    return nodes


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _yes(value) -> str:
    return "yes" if value else "no"


def print_text(doc: dict, out=None) -> None:
    """The report for people (to `out`, default stdout)."""
    out = out or sys.stdout

    def say(line: str = "") -> None:
        print(line, file=out)

    user = doc["user"]
    say(f"linuxdmabuf {doc['linuxdmabuf']} on Linux {doc['kernel']}, as {user['name']} (uid {user['uid']}; "
        f"groups: {', '.join(user['groups']) or '-'})")
    say()
    heaps = doc["dma_heap"]
    if not heaps["present"]:
        say(f"dma-heaps: none ({heaps['path']} does not exist)")
    else:
        say(f"dma-heaps in {heaps['path']}:")
        width = max([len(h["name"]) for h in heaps["heaps"]] + [4])
        for h in heaps["heaps"]:
            say(f"  {h['name']:<{width}}  {_node_text(h)}  kind: {h['kind'] or '? (only who may open it can tell)'}")
    u = doc["udmabuf"]
    if u["present"]:
        say(f"udmabuf: {u['path']}  {_node_text(u)}")
    else:
        say(f"udmabuf: no {u['path']}")
    limits = " ".join(f"{k}={'?' if v is None else v}" for k, v in u["limits"].items())
    say(f"  udmabuf in the kernel: {u['module']}; {limits}")
    s = doc["sw_sync"]
    say(f"sw_sync: {s['path'] + ': can open' if s['can_open'] else 'no: ' + str(s['error'])}")
    d = doc["debugfs"]
    if d["mounted"]:
        say(f"debugfs: mounted at {d['mounted']}; dma_buf/bufinfo readable by this user: {_yes(d['bufinfo_readable'])}")
    else:
        say("debugfs: not mounted")
    c = doc["cma"]
    if c["areas"]:
        say("CMA areas (linuxdmabuf cma draws them):")
        for a in c["areas"]:
            def pages(n, a=a):
                return "?" if n is None else f"{n} pages ({n * a['page_size'] / (1 << 20):.1f} MiB)"

            def count(key, a=a):
                return "?" if a[key] is None else a[key]
            say(f"  {a['name']}: total {pages(a['total_pages'])}, free {pages(a['free_pages'])}, largest free run "
                f"{pages(a['largest_free_pages'])}; pages allocated {count('alloc_pages_success')}, failed "
                f"{count('alloc_pages_fail')}; heaps: {', '.join(a['heaps']) or 'none'}")
            for why in sorted(set(a["missing"].values())):
                say(f"    not shown: {why}")
    else:
        say(f"CMA: {c['none_because']}")
    if doc["drm"]:
        say("DRM devices:")
        for n in doc["drm"]:
            if n["driver"] is None:
                say(f"  {n['path']}  {'denied' if n['denied'] else 'error'}: {n['error']}")
            else:
                say(f"  {n['path']}  {n['driver']:<10}  PRIME import: {_yes(n['prime_import'])} export: "
                    f"{_yes(n['prime_export'])}  syncobj: {_yes(n['syncobj'])} timeline: {_yes(n['syncobj_timeline'])}")
    else:
        say("DRM devices: none (/dev/dri is empty or missing)")
    say("features: " + " ".join(f"{k}={_yes(v)}" for k, v in doc["features"].items()))
    say()
    if doc["can_allocate"]:
        say(f"dma-bufs can be allocated here by this user: yes ({', '.join(doc['providers'])})")
    else:
        say("dma-bufs can be allocated here by this user: NO")
    if doc["fixes"]:
        say()
        say("To fix:")
        for f in doc["fixes"]:
            mark = "!" if f["blocks_allocation"] else "-"
            say(f"  {mark} {f['problem']}")
            say(f"      fix: {f['fix']}")
        if not doc["can_allocate"]:
            say("  - or run the code in a VM whose kernel has every device: linuxdmabuf vm -- CMD")
            say("      (QEMU; the kernel is built once by `linuxdmabuf vm --fetch`, or set $LINUXDMABUF_FULL_KERNEL)")


def _node_text(node: dict) -> str:
    state = f"open: {_yes(node['can_open'])}  allocate: {_yes(node['can_allocate'])}"
    if node["error"] and not node["can_allocate"]:
        state += f" ({node['error']})"
    return f"{node['filemode']} {node['owner']}:{node['group']}  ({node['others']})  {state}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="linuxdmabuf info", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 if this user can allocate a dma-buf, 1 if not.")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args(argv)
    doc = collect()

    def output():
        if args.json:
            json.dump(doc, sys.stdout, indent=1)
            print()
        else:
            print_text(doc)
        return 0 if doc["can_allocate"] else 1

    return stdout_closed_ok(output)
