/* The libc entry points the binding calls through cffi. glibc declares
 * ioctl() in <sys/ioctl.h> (every ioctl goes through it: linuxdmabuf/_sys.py)
 * and syscall() in <unistd.h> (for pidfd_getfd, which glibc does not wrap
 * and Python's os module lacks: linuxdmabuf/_fd.py). */
int ioctl(int fd, unsigned long request, ...);
long syscall(long number, ...);
