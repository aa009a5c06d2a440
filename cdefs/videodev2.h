/* V4L2: just what moving dma-bufs in and out of a video device needs
 * (linuxdmabuf/v4l2.py); linuxdmabuf is not a V4L2 binding.
 * Taken from Linux 7.2.13 include/uapi/linux/videodev2.h (Debian linux-libc-dev 7.2.13-1).
 * struct timeval is the C library's (<sys/time.h>) with 64-bit time_t: two
 * 64-bit integers on every ABI (on 32-bit ones, as built with glibc's
 * _TIME_BITS=64, the default of Debian's armhf since trixie). The kernel takes
 * this form and the older 32-bit one (VIDIOC_*_TIME32) from 32-bit programs;
 * only this one holds timestamps past 2038. v4l2_format's union holds
 * pointers (struct v4l2_window), hence its `align` member here: the union
 * starts 8 bytes in on 64-bit machines, as in the header.
 * v4l2_plane_pix_format is packed there; its 20 bytes need no padding either way. */
#define VIDEO_MAX_PLANES 8

#define V4L2_CAP_VIDEO_CAPTURE 0x00000001
#define V4L2_CAP_VIDEO_OUTPUT 0x00000002
#define V4L2_CAP_VIDEO_M2M 0x00008000
#define V4L2_CAP_VIDEO_CAPTURE_MPLANE 0x00001000
#define V4L2_CAP_VIDEO_OUTPUT_MPLANE 0x00002000
#define V4L2_CAP_VIDEO_M2M_MPLANE 0x00004000
#define V4L2_CAP_STREAMING 0x04000000
#define V4L2_CAP_DEVICE_CAPS 0x80000000

#define V4L2_BUF_TYPE_VIDEO_CAPTURE 1
#define V4L2_BUF_TYPE_VIDEO_OUTPUT 2
#define V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE 9
#define V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE 10

#define V4L2_MEMORY_MMAP 1
#define V4L2_MEMORY_DMABUF 4

#define V4L2_FIELD_NONE 1

#define V4L2_BUF_CAP_SUPPORTS_MMAP 0x00000001
#define V4L2_BUF_CAP_SUPPORTS_DMABUF 0x00000004

#define V4L2_BUF_FLAG_QUEUED 0x00000002
#define V4L2_BUF_FLAG_DONE 0x00000004
#define V4L2_BUF_FLAG_ERROR 0x00000040
#define V4L2_BUF_FLAG_LAST 0x00100000

struct v4l2_capability {
    __u8 driver[16];
    __u8 card[32];
    __u8 bus_info[32];
    __u32 version;
    __u32 capabilities;
    __u32 device_caps;
    __u32 reserved[3];
};

struct v4l2_pix_format {
    __u32 width;
    __u32 height;
    __u32 pixelformat;
    __u32 field;
    __u32 bytesperline;
    __u32 sizeimage;
    __u32 colorspace;
    __u32 priv;
    __u32 flags;
    union {
        __u32 ycbcr_enc;
        __u32 hsv_enc;
    };
    __u32 quantization;
    __u32 xfer_func;
};

struct v4l2_plane_pix_format {
    __u32 sizeimage;
    __u32 bytesperline;
    __u16 reserved[6];
};

struct v4l2_pix_format_mplane {
    __u32 width;
    __u32 height;
    __u32 pixelformat;
    __u32 field;
    __u32 colorspace;
    struct v4l2_plane_pix_format plane_fmt[VIDEO_MAX_PLANES];
    __u8 num_planes;
    __u8 flags;
    union {
        __u8 ycbcr_enc;
        __u8 hsv_enc;
    };
    __u8 quantization;
    __u8 xfer_func;
    __u8 reserved[7];
};

struct v4l2_format {
    __u32 type;
    union {
        struct v4l2_pix_format pix;
        struct v4l2_pix_format_mplane pix_mp;
        __u8 raw_data[200];
        void *align;
    } fmt;
};

struct v4l2_requestbuffers {
    __u32 count;
    __u32 type;
    __u32 memory;
    __u32 capabilities;
    __u8 flags;
    __u8 reserved[3];
};

struct v4l2_plane {
    __u32 bytesused;
    __u32 length;
    union {
        __u32 mem_offset;
        unsigned long userptr;
        __s32 fd;
    } m;
    __u32 data_offset;
    __u32 reserved[11];
};

struct timeval {
    __s64 tv_sec;
    __s64 tv_usec;
};

struct v4l2_timecode {
    __u32 type;
    __u32 flags;
    __u8 frames;
    __u8 seconds;
    __u8 minutes;
    __u8 hours;
    __u8 userbits[4];
};

struct v4l2_buffer {
    __u32 index;
    __u32 type;
    __u32 bytesused;
    __u32 flags;
    __u32 field;
    struct timeval timestamp;
    struct v4l2_timecode timecode;
    __u32 sequence;
    __u32 memory;
    union {
        __u32 offset;
        unsigned long userptr;
        struct v4l2_plane *planes;
        __s32 fd;
    } m;
    __u32 length;
    __u32 reserved2;
    union {
        __s32 request_fd;
        __u32 reserved;
    };
};

struct v4l2_fmtdesc {
    __u32 index;
    __u32 type;
    __u32 flags;
    __u8 description[32];
    __u32 pixelformat;
    __u32 mbus_code;
    __u32 reserved[3];
};

struct v4l2_exportbuffer {
    __u32 type;
    __u32 index;
    __u32 plane;
    __u32 flags;
    __s32 fd;
    __u32 reserved[11];
};
