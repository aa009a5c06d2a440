"""Where the kernel's pseudo file systems are mounted: debugfs (sw_sync, dma_buf/bufinfo) and tracefs
(the dma_buf trace events), from this process's mount table."""


def mount_point(fstype: str) -> str | None:
    """The first mount point of a file system of type `fstype` in /proc/self/mounts, or None."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == fstype:
                    return fields[1].replace("\\040", " ")
    except FileNotFoundError:  # no /proc; any other error (EMFILE...) is not "not mounted"
        pass
    return None


def debugfs_mount() -> str | None:
    """Where debugfs is mounted (normally /sys/kernel/debug), or None."""
    return mount_point("debugfs")


def tracefs_mount() -> str | None:
    """Where tracefs is mounted (normally /sys/kernel/tracing; <debugfs>/tracing on old set-ups), or None."""
    return mount_point("tracefs")


def kernel_has(fstype: str) -> bool:
    """Whether the running kernel has file system `fstype` (/proc/filesystems); True without /proc."""
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == [fstype] for line in f)
    except FileNotFoundError:
        return True
