/* dma-buf file descriptors: CPU access, names, implicit-fence import/export.
 * Taken from Linux 7.2.13 include/uapi/linux/dma-buf.h (Debian linux-libc-dev 7.2.13-1).
 * The ioctl numbers are macros there; linuxdmabuf/_uapi.py computes them with
 * the same _IOW/_IOWR encoding from the sizes declared here. */
struct dma_buf_sync {
    __u64 flags;
};

#define DMA_BUF_SYNC_READ 0x1
#define DMA_BUF_SYNC_WRITE 0x2
#define DMA_BUF_SYNC_RW 0x3
#define DMA_BUF_SYNC_START 0x0
#define DMA_BUF_SYNC_END 0x4
#define DMA_BUF_SYNC_VALID_FLAGS_MASK 0x7

#define DMA_BUF_NAME_LEN 32

struct dma_buf_export_sync_file {
    __u32 flags;
    __s32 fd;
};

struct dma_buf_import_sync_file {
    __u32 flags;
    __s32 fd;
};
