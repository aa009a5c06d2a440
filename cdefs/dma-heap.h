/* DMA-BUF heaps: /dev/dma_heap/<name> allocation.
 * Taken from Linux 7.2.13 include/uapi/linux/dma-heap.h (Debian linux-libc-dev 7.2.13-1).
 * DMA_HEAP_VALID_FD_FLAGS is (O_CLOEXEC | O_ACCMODE) there; the value below is
 * that expression on Linux (O_CLOEXEC 02000000, O_ACCMODE 3). */
struct dma_heap_allocation_data {
    __u64 len;
    __u32 fd;
    __u32 fd_flags;
    __u64 heap_flags;
};

#define DMA_HEAP_VALID_FD_FLAGS 0x80003
#define DMA_HEAP_VALID_HEAP_FLAGS 0
