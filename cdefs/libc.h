/* The one libc entry point the binding calls through cffi: every ioctl goes
 * through it (linuxdmabuf/_ioctl.py). glibc declares it in <sys/ioctl.h>. */
int ioctl(int fd, unsigned long request, ...);
