/* Dumb buffers, the driver-independent way to get a GEM object to export.
 * Taken from Linux 7.2.13 include/uapi/drm/drm_mode.h (Debian linux-libc-dev 7.2.13-1). */
struct drm_mode_create_dumb {
    __u32 height;
    __u32 width;
    __u32 bpp;
    __u32 flags;
    __u32 handle;
    __u32 pitch;
    __u64 size;
};

struct drm_mode_map_dumb {
    __u32 handle;
    __u32 pad;
    __u64 offset;
};

struct drm_mode_destroy_dumb {
    __u32 handle;
};
