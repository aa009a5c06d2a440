/* udmabuf: dma-bufs made of memfd pages, through /dev/udmabuf.
 * Taken from Linux 7.2.13 include/uapi/linux/udmabuf.h (Debian linux-libc-dev 7.2.13-1). */
#define UDMABUF_FLAGS_CLOEXEC 0x01

struct udmabuf_create {
    __u32 memfd;
    __u32 flags;
    __u64 offset;
    __u64 size;
};

struct udmabuf_create_item {
    __u32 memfd;
    __u32 __pad;
    __u64 offset;
    __u64 size;
};

struct udmabuf_create_list {
    __u32 flags;
    __u32 count;
    struct udmabuf_create_item list[];
};
