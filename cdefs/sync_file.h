/* sync_file: explicit fences as file descriptors.
 * Taken from Linux 7.2.13 include/uapi/linux/sync_file.h (Debian linux-libc-dev 7.2.13-1). */
struct sync_merge_data {
    char name[32];
    __s32 fd2;
    __s32 fence;
    __u32 flags;
    __u32 pad;
};

struct sync_fence_info {
    char obj_name[32];
    char driver_name[32];
    __s32 status;
    __u32 flags;
    __u64 timestamp_ns;
};

struct sync_file_info {
    char name[32];
    __s32 status;
    __u32 flags;
    __u32 num_fences;
    __u32 pad;
    __u64 sync_fence_info;
};

struct sync_set_deadline {
    __u64 deadline_ns;
    __u64 pad;
};
