/* sw_sync: software fence timelines for tests, <debugfs>/sync/sw_sync.
 * Not in any uAPI header: taken from the private definitions in Linux 7.2.13
 * drivers/dma-buf/sw_sync.c (Debian linux-source-7.2 7.2.13-1). The kernel
 * ignores `name`; `fence` is the new sync_file fd. */
struct sw_sync_create_fence_data {
    __u32 value;
    char name[32];
    __s32 fence;
};

struct sw_sync_get_deadline {
    __u64 deadline_ns;
    __u32 pad;
    __s32 fence_fd;
};
