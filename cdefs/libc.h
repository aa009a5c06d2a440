/* The libc entry point the binding calls through cffi: syscall(), declared
 * in <unistd.h>, for pidfd_getfd, which glibc does not wrap and Python's os
 * module lacks (linuxdmabuf/_fd.py). ioctls are made by Python's
 * fcntl.ioctl() on the cffi structs' memory (linuxdmabuf/_sys.py). */
long syscall(long number, ...);
