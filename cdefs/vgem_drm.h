/* vgem's fence ioctls: real, driver-owned implicit fences on a dma-buf.
 * Taken from Linux 7.2.13 include/uapi/drm/vgem_drm.h (Debian linux-libc-dev 7.2.13-1). */
#define DRM_VGEM_FENCE_ATTACH 0x1
#define DRM_VGEM_FENCE_SIGNAL 0x2
#define VGEM_FENCE_WRITE 0x1

struct drm_vgem_fence_attach {
    __u32 handle;
    __u32 flags;
    __u32 out_fence;
    __u32 pad;
};

struct drm_vgem_fence_signal {
    __u32 fence;
    __u32 flags;
};
