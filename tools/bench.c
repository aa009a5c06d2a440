/* The C reference for tools/bench: the same syscalls as each benchmarked
 * operation, timed in a loop. Compiled on the spot by tools/bench (cc -O2).
 *
 *   bench OP ITERATIONS     prints the mean nanoseconds per operation
 *   bench kms_commit|kms_frame ITERATIONS FD FENCE_OBJ FENCE_PROP PACE_US OBJ:PROP:VALUE...
 *                           non-blocking atomic commits of those properties plus the
 *                           out-fence pointer (FENCE_PROP of object FENCE_OBJ: the CRTC's
 *                           or the writeback connector's) on the display fd FD (inherited), each
 *                           waited for and closed, then PACE_US microseconds of sleep (not
 *                           timed); prints the ns per commit alone (kms_commit) or per
 *                           commit, wait and close (kms_frame)
 *   bench syncobj_signal_wait|syncobj_import_export ITERATIONS DRM_NODE
 *                           on a new timeline of DRM_NODE (a node whose driver has
 *                           DRM_CAP_SYNCOBJ_TIMELINE): TIMELINE_SIGNAL + QUERY + TIMELINE_WAIT
 *                           of a point, or FD_TO_HANDLE(IMPORT_SYNC_FILE) of an idle buffer's
 *                           sync_file at a point + HANDLE_TO_FD(EXPORT_SYNC_FILE) of it + close
 *   bench v4l2_pair ITERATIONS FD BUFFERS
 *                           VIDIOC_DQBUF + VIDIOC_QBUF pairs on the streaming video
 *                           capture queue of fd FD (inherited from tools/bench), BUFFERS
 *                           at a time once the device has filled them all
 *
 * Needs /dev/dma_heap/system and /dev/udmabuf (and nothing else).
 *
 * Each timed span is also the span `tools/bench --instructions` counts: run under
 * callgrind --collect-atstart=no, region_begin() and region_end() switch counting on
 * and off (CALLGRIND_TOGGLE_COLLECT; outside valgrind a few no-op instructions).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/sync_file.h>
#include <linux/udmabuf.h>
#include <linux/videodev2.h>
#include <drm/drm.h>
#include <drm/drm_mode.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <valgrind/callgrind.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A timed and counted span: the clock is read outside the count. */
static long long region_begin(void)
{
	long long start = now_ns();
	CALLGRIND_TOGGLE_COLLECT;
	return start;
}

static long long region_end(long long start)
{
	CALLGRIND_TOGGLE_COLLECT;
	return now_ns() - start;
}

static int heap_alloc(int heap, size_t len)
{
	struct dma_heap_allocation_data data = { .len = len, .fd_flags = O_RDWR | O_CLOEXEC };
	if (ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &data) < 0)
		die("DMA_HEAP_IOCTL_ALLOC");
	return data.fd;
}

static void sync_pair(int buf)
{
	struct dma_buf_sync start = { .flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW };
	struct dma_buf_sync end = { .flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW };
	if (ioctl(buf, DMA_BUF_IOCTL_SYNC, &start) < 0 || ioctl(buf, DMA_BUF_IOCTL_SYNC, &end) < 0)
		die("DMA_BUF_IOCTL_SYNC");
}

static void sync_write(int buf, unsigned long long when)
{
	struct dma_buf_sync arg = { .flags = when | DMA_BUF_SYNC_WRITE };
	if (ioctl(buf, DMA_BUF_IOCTL_SYNC, &arg) < 0)
		die("DMA_BUF_IOCTL_SYNC");
}

static int export_sync_file(int buf)
{
	struct dma_buf_export_sync_file arg = { .flags = DMA_BUF_SYNC_READ };
	if (ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &arg) < 0)
		die("DMA_BUF_IOCTL_EXPORT_SYNC_FILE");
	return arg.fd;
}

/* SYNC_IOC_FILE_INFO both passes: the count, then each fence's details. */
static void file_info(int fence)
{
	struct sync_file_info info = { 0 };
	struct sync_fence_info fences[4];
	if (ioctl(fence, SYNC_IOC_FILE_INFO, &info) < 0)
		die("SYNC_IOC_FILE_INFO");
	memset(&info, 0, sizeof(info));
	info.num_fences = 1;
	info.sync_fence_info = (unsigned long)fences;
	if (ioctl(fence, SYNC_IOC_FILE_INFO, &info) < 0)
		die("SYNC_IOC_FILE_INFO");
}

static int wait_fd(int fd, short events, int timeout)
{
	struct pollfd p = { .fd = fd, .events = events };
	return poll(&p, 1, timeout);
}

/* Whether the device has filled all `buffers` (VIDIOC_QUERYBUF: V4L2_BUF_FLAG_DONE on each). */
static int all_done(int fd, int buffers)
{
	for (int i = 0; i < buffers; i++) {
		struct v4l2_buffer b = { .index = i, .type = V4L2_BUF_TYPE_VIDEO_CAPTURE, .memory = V4L2_MEMORY_DMABUF };
		if (ioctl(fd, VIDIOC_QUERYBUF, &b) < 0)
			die("VIDIOC_QUERYBUF");
		if (!(b.flags & V4L2_BUF_FLAG_DONE))
			return 0;
	}
	return 1;
}

/* Every BUFFERS pairs, wait (untimed) until the device filled them all, then time the pairs alone. */
static double v4l2_pairs(int fd, long n, int buffers)
{
	struct v4l2_buffer b = { .type = V4L2_BUF_TYPE_VIDEO_CAPTURE, .memory = V4L2_MEMORY_DMABUF };
	long long timed = 0;
	for (long done = 0; done < n; done += buffers) {
		while (!all_done(fd, buffers))
			usleep(20000);
		long long start = region_begin();
		for (int i = 0; i < buffers; i++) {
			if (ioctl(fd, VIDIOC_DQBUF, &b) < 0)
				die("VIDIOC_DQBUF");
			b.bytesused = 0; /* the index, fd and length stay as DQBUF gave them back */
			if (ioctl(fd, VIDIOC_QBUF, &b) < 0)
				die("VIDIOC_QBUF");
		}
		timed += region_end(start);
	}
	return (double)timed / n;
}

/* N commits of the given (object, property, value) triples and an out-fence pointer; each waited for.
 * Times (and counts) the commit alone, or with `frame` the commit, the wait and the close. */
static double kms_commits(long n, int frame, int fd, __u32 crtc, __u32 out_prop, long pace_us, int count,
			  char **triples)
{
	__u32 objs[16], counts[16], props[32];
	__u64 values[32];
	int nobjs = 0, nprops = 0;
	__s32 fence = -1;
	for (int i = 0; i <= count; i++) {
		unsigned obj, prop;
		unsigned long long value;
		if (i < count) {
			if (sscanf(triples[i], "%u:%u:%llu", &obj, &prop, &value) != 3)
				die("OBJ:PROP:VALUE");
		} else {
			obj = crtc, prop = out_prop, value = (__u64)(unsigned long)&fence;
		}
		if (!nobjs || objs[nobjs - 1] != obj)
			objs[nobjs] = obj, counts[nobjs++] = 0;
		counts[nobjs - 1]++;
		props[nprops] = prop, values[nprops++] = value;
	}
	struct drm_mode_atomic atomic = {
		.flags = DRM_MODE_ATOMIC_NONBLOCK, .count_objs = nobjs, .objs_ptr = (__u64)(unsigned long)objs,
		.count_props_ptr = (__u64)(unsigned long)counts, .props_ptr = (__u64)(unsigned long)props,
		.prop_values_ptr = (__u64)(unsigned long)values,
	};
	long long timed = 0;
	for (long i = 0; i < n; i++) {
		long long t = region_begin();
		if (ioctl(fd, DRM_IOCTL_MODE_ATOMIC, &atomic) < 0)
			die("DRM_IOCTL_MODE_ATOMIC");
		if (!frame)
			timed += region_end(t);
		int signaled = wait_fd(fence, POLLIN, 20000) == 1;
		close(fence);
		if (frame)
			timed += region_end(t);
		if (!signaled) {
			fprintf(stderr, "the out-fence did not signal within 20 s\n");
			exit(1);
		}
		if (pace_us)
			usleep(pace_us);
	}
	return (double)timed / n;
}

static void syncobj_ioctl(int fd, unsigned long request, void *arg, const char *what)
{
	if (ioctl(fd, request, arg) < 0)
		die(what);
}

static double syncobj_bench(const char *op, long n, const char *node, int buf)
{
	int fd = open(node, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("open DRM node");
	struct drm_syncobj_create create = { 0 };
	syncobj_ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &create, "DRM_IOCTL_SYNCOBJ_CREATE");
	uint32_t handle = create.handle;
	int idle = export_sync_file(buf);
	long long start = region_begin();
	for (long i = 0; i < n; i++) {
		uint64_t point = i + 1;
		if (!strcmp(op, "syncobj_signal_wait")) {
			struct drm_syncobj_timeline_array signal = {
				.handles = (uintptr_t)&handle, .points = (uintptr_t)&point, .count_handles = 1 };
			syncobj_ioctl(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, &signal, "TIMELINE_SIGNAL");
			uint64_t value = 0;
			struct drm_syncobj_timeline_array query = {
				.handles = (uintptr_t)&handle, .points = (uintptr_t)&value, .count_handles = 1 };
			syncobj_ioctl(fd, DRM_IOCTL_SYNCOBJ_QUERY, &query, "QUERY");
			struct drm_syncobj_timeline_wait wait = {
				.handles = (uintptr_t)&handle, .points = (uintptr_t)&point, .count_handles = 1,
				.timeout_nsec = INT64_MAX, .flags = DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT };
			syncobj_ioctl(fd, DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, &wait, "TIMELINE_WAIT");
		} else {
			struct drm_syncobj_handle in = {
				.handle = handle, .fd = idle, .point = point,
				.flags = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE | DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE };
			syncobj_ioctl(fd, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in, "FD_TO_HANDLE");
			struct drm_syncobj_handle out = {
				.handle = handle, .point = point,
				.flags = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE | DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE };
			syncobj_ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &out, "HANDLE_TO_FD");
			close(out.fd);
		}
	}
	long long elapsed = region_end(start);
	close(idle);
	close(fd);  /* destroys the syncobj */
	return (double)elapsed / n;
}

static const char *const OPS[] = { "sync_pair", "cpu_access", "heap_alloc_4k", "heap_alloc_1m", "udmabuf_64k",
				    "export_info_wait", "merge", "wait_idle", "fill_memset", "fill_memcpy" };
enum { SYNC_PAIR, CPU_ACCESS, HEAP_ALLOC_4K, HEAP_ALLOC_1M, UDMABUF_64K, EXPORT_INFO_WAIT, MERGE, WAIT_IDLE,
       FILL_MEMSET, FILL_MEMCPY, N_OPS };

int main(int argc, char **argv)
{
	if (argc >= 7 && (!strcmp(argv[1], "kms_commit") || !strcmp(argv[1], "kms_frame"))) {
		printf("%.1f\n", kms_commits(atol(argv[2]), !strcmp(argv[1], "kms_frame"), atoi(argv[3]), atoi(argv[4]),
					     atoi(argv[5]), atol(argv[6]), argc - 7, argv + 7));
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "v4l2_pair")) {
		printf("%.1f\n", v4l2_pairs(atoi(argv[3]), atol(argv[2]), atoi(argv[4])));
		return 0;
	}
	if (argc == 4 && !strncmp(argv[1], "syncobj_", 8)) {
		int heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
		if (heap < 0)
			die("open");
		printf("%.1f\n", syncobj_bench(argv[1], atol(argv[2]), argv[3], heap_alloc(heap, 4096)));
		return 0;
	}
	int op = 0;
	while (argc == 3 && op < N_OPS && strcmp(argv[1], OPS[op]))
		op++;
	if (argc != 3 || op == N_OPS) {
		fprintf(stderr, "usage: %s OP ITERATIONS\n", argv[0]);
		return 2;
	}
	long n = atol(argv[2]);
	int heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
	int udmabuf = open("/dev/udmabuf", O_RDONLY | O_CLOEXEC);
	if (heap < 0 || udmabuf < 0)
		die("open");
	size_t big = 64 << 20;
	int fill = op == FILL_MEMSET || op == FILL_MEMCPY;
	int buf = heap_alloc(heap, fill ? big : 4096);
	int fence_a = export_sync_file(buf), fence_b = export_sync_file(buf);
	char *map = NULL, *src = NULL;
	if (fill) {
		map = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_SHARED, buf, 0);
		src = malloc(big);
		if (map == MAP_FAILED || !src)
			die("mmap");
		memset(src, 0xab, big);
		memset(map, 0, big);
	}

	long long start = region_begin();
	for (long i = 0; i < n; i++) {
		switch (op) {
		case SYNC_PAIR:
		case CPU_ACCESS:
			sync_pair(buf);
			break;
		case HEAP_ALLOC_4K:
			close(heap_alloc(heap, 4096));
			break;
		case HEAP_ALLOC_1M:
			close(heap_alloc(heap, 1 << 20));
			break;
		case UDMABUF_64K: {
			int memfd = memfd_create("bench", MFD_CLOEXEC | MFD_ALLOW_SEALING);
			if (memfd < 0 || ftruncate(memfd, 65536) < 0 ||
			    fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
				die("memfd");
			struct udmabuf_create create = { .memfd = memfd, .flags = UDMABUF_FLAGS_CLOEXEC, .size = 65536 };
			int fd = ioctl(udmabuf, UDMABUF_CREATE, &create);
			if (fd < 0)
				die("UDMABUF_CREATE");
			close(memfd);
			close(fd);
			break;
		}
		case EXPORT_INFO_WAIT: {
			int fence = export_sync_file(buf);
			file_info(fence);
			if (wait_fd(fence, POLLIN, 0) != 1)
				die("poll");
			close(fence);
			break;
		}
		case MERGE: {
			struct sync_merge_data data = { .name = "merged", .fd2 = fence_b };
			if (ioctl(fence_a, SYNC_IOC_MERGE, &data) < 0)
				die("SYNC_IOC_MERGE");
			close(data.fence);
			break;
		}
		case WAIT_IDLE:
			if (wait_fd(buf, POLLIN, -1) != 1)
				die("poll");
			break;
		case FILL_MEMSET:
			sync_write(buf, DMA_BUF_SYNC_START);
			memset(map, 0xab, big);
			sync_write(buf, DMA_BUF_SYNC_END);
			break;
		case FILL_MEMCPY:
			sync_write(buf, DMA_BUF_SYNC_START);
			memcpy(map, src, big);
			sync_write(buf, DMA_BUF_SYNC_END);
			break;
		}
	}
	long long elapsed = region_end(start);
	printf("%.1f\n", (double)elapsed / n);
	return 0;
}
