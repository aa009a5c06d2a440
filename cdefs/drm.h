/* The few DRM structs linuxdmabuf/drm.py and kms.py need to move dma-bufs in
 * and out of a real importer and onto a display; linuxdmabuf is not a DRM binding.
 * Taken from Linux 7.2.13 include/uapi/drm/drm.h (drm_version, drm_get_cap,
 * drm_gem_close, drm_prime_handle, drm_set_client_cap, and the drm_syncobj_* structs of
 * DRM sync objects for linuxdmabuf/syncobj.py) (Debian linux-libc-dev 7.2.13-1). */
struct drm_version {
    int version_major;
    int version_minor;
    int version_patchlevel;
    size_t name_len;
    char *name;
    size_t date_len;
    char *date;
    size_t desc_len;
    char *desc;
};

struct drm_get_cap {
    __u64 capability;
    __u64 value;
};

struct drm_gem_close {
    __u32 handle;
    __u32 pad;
};

struct drm_prime_handle {
    __u32 handle;
    __u32 flags;
    __s32 fd;
};

struct drm_set_client_cap {
    __u64 capability;
    __u64 value;
};

#define DRM_CLIENT_CAP_UNIVERSAL_PLANES 2
#define DRM_CLIENT_CAP_ATOMIC 3
#define DRM_CLIENT_CAP_WRITEBACK_CONNECTORS 5
#define DRM_CAP_DUMB_BUFFER 0x1
#define DRM_CAP_PRIME 0x5
#define DRM_PRIME_CAP_IMPORT 0x1
#define DRM_PRIME_CAP_EXPORT 0x2
#define DRM_COMMAND_BASE 0x40
#define DRM_CAP_SYNCOBJ 0x13
#define DRM_CAP_SYNCOBJ_TIMELINE 0x14

struct drm_syncobj_create {
    __u32 handle;
    __u32 flags;
};

struct drm_syncobj_destroy {
    __u32 handle;
    __u32 pad;
};

struct drm_syncobj_handle {
    __u32 handle;
    __u32 flags;
    __s32 fd;
    __u32 pad;
    __u64 point;
};

struct drm_syncobj_transfer {
    __u32 src_handle;
    __u32 dst_handle;
    __u64 src_point;
    __u64 dst_point;
    __u32 flags;
    __u32 pad;
};

struct drm_syncobj_wait {
    __u64 handles;
    __s64 timeout_nsec;
    __u32 count_handles;
    __u32 flags;
    __u32 first_signaled;
    __u32 pad;
    __u64 deadline_nsec;
};

struct drm_syncobj_timeline_wait {
    __u64 handles;
    __u64 points;
    __s64 timeout_nsec;
    __u32 count_handles;
    __u32 flags;
    __u32 first_signaled;
    __u32 pad;
    __u64 deadline_nsec;
};

struct drm_syncobj_eventfd {
    __u32 handle;
    __u32 flags;
    __u64 point;
    __s32 fd;
    __u32 pad;
};

struct drm_syncobj_array {
    __u64 handles;
    __u32 count_handles;
    __u32 pad;
};

struct drm_syncobj_timeline_array {
    __u64 handles;
    __u64 points;
    __u32 count_handles;
    __u32 flags;
};

#define DRM_SYNCOBJ_CREATE_SIGNALED 1
#define DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE 1
#define DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE 2
#define DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE 1
#define DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE 2
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL 1
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT 2
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE 4
#define DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED 1
