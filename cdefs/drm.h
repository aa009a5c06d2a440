/* The few DRM structs linuxdmabuf/drm.py and kms.py need to move dma-bufs in
 * and out of a real importer and onto a display; linuxdmabuf is not a DRM binding.
 * Taken from Linux 7.2.13 include/uapi/drm/drm.h (drm_version, drm_get_cap,
 * drm_gem_close, drm_prime_handle, drm_set_client_cap) (Debian linux-libc-dev 7.2.13-1). */
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
