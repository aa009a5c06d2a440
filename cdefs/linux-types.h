/* Fixed-width kernel types used by the uAPI structs below.
 * From Linux 7.2.13 include/uapi/asm-generic/int-ll64.h (x86_64 and every
 * other architecture Linux supports use these widths). */
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef int32_t __s32;
typedef uint64_t __u64;
typedef int64_t __s64;
