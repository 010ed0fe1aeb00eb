/*
 * A fake CUDA driver (libcuda.so) for testing ptfile-cuda on machines without a GPU.
 *
 * It implements, in host memory, the driver entry points ptfile-cuda calls, and it is strict
 * where the real driver is merely racy, so that ordering bugs show up as wrong bytes or as an
 * abort with a message instead of passing by luck:
 *
 * - Asynchronous copies (cuMemcpyHtoDAsync) are queued on their stream and run only when the
 *   program waits (cuEventSynchronize on a later event, cuStreamSynchronize, cuStreamDestroy).
 *   The source bytes are read then, not when the copy was queued: a staging buffer rewritten
 *   before its copy was waited for uploads the wrong bytes.
 * - Freeing a pinned buffer or a device allocation that a queued copy still uses, reading back
 *   (cuMemcpyDtoH) a range a queued copy still writes, and any copy outside a live allocation
 *   abort the process with a message on stderr.
 * - Every call that needs a current context fails with CUDA_ERROR_INVALID_CONTEXT without one.
 * - Device pointers are not host addresses (dereferencing one faults).
 *
 * Environment: FAKE_CUDA_DEVICES (device count, default 1; 0 gives CUDA_ERROR_NO_DEVICE from
 * cuInit), FAKE_CUDA_MEM_BYTES (device memory per device, default unlimited),
 * FAKE_CUDA_PINNED_BYTES (pinned host memory, default unlimited), FAKE_CUDA_ASYNC_PAGEABLE=1
 * (allow asynchronous copies from pageable memory; refused by default, since ptfile-cuda always
 * stages through pinned buffers), FAKE_CUDA_DISCARD=1 (device memory holds no bytes: copies
 * are checked and counted but dropped, and reading back aborts; for measuring the host side's
 * speed and resident memory), FAKE_CUDA_STATS (a file that gets one line of counters at exit).
 *
 * Build: cc -shared -fPIC -O1 -o DIR/libcuda.so libcuda.c -lpthread
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct fake_ctx *CUcontext;
typedef struct fake_stream *CUstream;
typedef struct fake_event *CUevent;

enum {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
};

#define MAX_DEVICES 16
#define MAX_STACK 64
/* Device addresses live far from any host mapping: a host dereference faults. */
#define DEVICE_BASE 0x7f0000000000000ULL

struct fake_ctx {
    int dev;
    int retains;
};

struct alloc {
    uintptr_t host;   /* where the bytes really are */
    uint64_t addr;    /* the address the program sees (device pointer or host pointer) */
    size_t len;
    int pinned;       /* 1: cuMemHostAlloc, 0: cuMemAlloc */
    int dev;
    struct alloc *next;
};

struct op {
    int is_event;
    CUevent event;
    uint64_t dst;     /* device address */
    const void *src;  /* host address */
    size_t len;
    struct op *next;
};

struct fake_stream {
    struct fake_ctx *ctx;
    struct op *head, *tail;
};

struct fake_event {
    struct fake_ctx *ctx;
    CUstream pending; /* the stream whose queue holds this event's marker, or NULL */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int device_count = 1;
static unsigned long long mem_limit, pinned_limit;
static int async_pageable, discard;
static struct fake_ctx contexts[MAX_DEVICES];
static struct alloc *allocs;
static uint64_t next_device_addr = DEVICE_BASE;
static unsigned long long mem_used[MAX_DEVICES], pinned_used;
static unsigned long long stat_async_copies, stat_async_bytes, stat_pinned_peak,
    stat_device_peak, stat_dtoh_bytes, stat_sync_htod_bytes;

static __thread CUcontext ctx_stack[MAX_STACK];
static __thread int ctx_depth;

static void fatal(const char *what) {
    fprintf(stderr, "fake libcuda: %s\n", what);
    fflush(stderr);
    abort();
}

static unsigned long long env_ull(const char *name, unsigned long long fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    return strtoull(v, NULL, 10);
}

static struct fake_ctx *current(void) {
    return ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : NULL;
}

/* The allocation of the given kind that holds [addr, addr+len), or NULL. */
static struct alloc *find(uint64_t addr, size_t len, int pinned) {
    for (struct alloc *a = allocs; a; a = a->next) {
        if (a->pinned == pinned && addr >= a->addr && len <= a->len &&
            addr - a->addr <= a->len - len)
            return a;
    }
    return NULL;
}

static int overlaps(uint64_t a, size_t alen, uint64_t b, size_t blen) {
    return a < b + blen && b < a + alen;
}

static struct fake_stream *streams[1024];
static int nstreams;

/* A queued copy that reads [addr, addr+len) (host) or writes it (device), or NULL. */
static const struct op *queued_use(uint64_t addr, size_t len, int device) {
    for (int i = 0; i < nstreams; i++) {
        for (struct op *o = streams[i] ? streams[i]->head : NULL; o; o = o->next) {
            if (o->is_event) continue;
            if (device ? overlaps(o->dst, o->len, addr, len)
                       : overlaps((uint64_t)(uintptr_t)o->src, o->len, addr, len))
                return o;
        }
    }
    return NULL;
}

static void run_copy(const struct op *o) {
    struct alloc *d = find(o->dst, o->len, 0);
    if (!d) fatal("a queued copy's device allocation was freed before the copy ran");
    if (discard) return;
    memcpy((void *)(d->host + (o->dst - d->addr)), o->src, o->len);
}

/* Runs the stream's queued work up to and including `until` (NULL: everything). */
static void drain(struct fake_stream *s, CUevent until) {
    while (s->head) {
        struct op *o = s->head;
        s->head = o->next;
        if (!s->head) s->tail = NULL;
        int stop = 0;
        if (o->is_event == 1) {
            if (o->event->pending == s) o->event->pending = NULL;
            stop = (o->event == until);
        } else if (o->is_event == 0) {
            run_copy(o);
        } /* 2: the marker of an event recorded again later or destroyed */
        free(o);
        if (stop) return;
    }
}

static void write_stats(void) {
    const char *path = getenv("FAKE_CUDA_STATS");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    unsigned long long live = 0;
    for (struct alloc *a = allocs; a; a = a->next) live += !a->pinned;
    fprintf(f,
            "async_copies=%llu async_bytes=%llu pinned_peak=%llu device_peak=%llu "
            "dtoh_bytes=%llu sync_htod_bytes=%llu live_device_allocs=%llu\n",
            stat_async_copies, stat_async_bytes, stat_pinned_peak, stat_device_peak,
            stat_dtoh_bytes, stat_sync_htod_bytes, live);
    fclose(f);
}

CUresult cuInit(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    if (!initialized) {
        device_count = (int)env_ull("FAKE_CUDA_DEVICES", 1);
        if (device_count > MAX_DEVICES) device_count = MAX_DEVICES;
        mem_limit = env_ull("FAKE_CUDA_MEM_BYTES", 0);
        pinned_limit = env_ull("FAKE_CUDA_PINNED_BYTES", 0);
        async_pageable = (int)env_ull("FAKE_CUDA_ASYNC_PAGEABLE", 0);
        discard = (int)env_ull("FAKE_CUDA_DISCARD", 0);
        for (int i = 0; i < MAX_DEVICES; i++) contexts[i].dev = i;
        atexit(write_stats);
        initialized = 1;
    }
    pthread_mutex_unlock(&lock);
    return device_count == 0 ? NO_DEVICE : SUCCESS;
}

static const char *error_name(CUresult e) {
    switch (e) {
    case SUCCESS: return "CUDA_SUCCESS";
    case INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    case INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    default: return NULL;
    }
}

CUresult cuGetErrorName(CUresult e, const char **out) {
    const char *n = error_name(e);
    if (!n || !out) return INVALID_VALUE;
    *out = n;
    return SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char **out) {
    if (!error_name(e) || !out) return INVALID_VALUE;
    *out = e == OUT_OF_MEMORY ? "out of memory (fake driver)" : "fake driver error";
    return SUCCESS;
}

#define NEED_INIT() do { if (!initialized) return NOT_INITIALIZED; } while (0)

CUresult cuDeviceGetCount(int *count) {
    NEED_INIT();
    if (!count) return INVALID_VALUE;
    *count = device_count;
    return SUCCESS;
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    NEED_INIT();
    if (!dev) return INVALID_VALUE;
    if (ordinal < 0 || ordinal >= device_count) return INVALID_DEVICE;
    *dev = ordinal;
    return SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    NEED_INIT();
    if (!name || len <= 0) return INVALID_VALUE;
    if (dev < 0 || dev >= device_count) return INVALID_DEVICE;
    snprintf(name, (size_t)len, "ptfile fake CUDA device %d", dev);
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
    NEED_INIT();
    if (!ctx) return INVALID_VALUE;
    if (dev < 0 || dev >= device_count) return INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    contexts[dev].retains++;
    pthread_mutex_unlock(&lock);
    *ctx = &contexts[dev];
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    NEED_INIT();
    if (dev < 0 || dev >= device_count) return INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    int bad = contexts[dev].retains <= 0;
    if (!bad) contexts[dev].retains--;
    pthread_mutex_unlock(&lock);
    if (bad) fatal("cuDevicePrimaryCtxRelease without a matching retain");
    return SUCCESS;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    NEED_INIT();
    if (!ctx || ctx->retains <= 0) return INVALID_CONTEXT;
    if (ctx_depth >= MAX_STACK) return INVALID_VALUE;
    ctx_stack[ctx_depth++] = ctx;
    return SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext *out) {
    NEED_INIT();
    if (ctx_depth == 0) return INVALID_CONTEXT;
    CUcontext c = ctx_stack[--ctx_depth];
    if (out) *out = c;
    return SUCCESS;
}

#define NEED_CTX() do { NEED_INIT(); if (!current()) return INVALID_CONTEXT; } while (0)

CUresult cuStreamCreate(CUstream *out, unsigned int flags) {
    (void)flags;
    NEED_CTX();
    if (!out) return INVALID_VALUE;
    struct fake_stream *s = calloc(1, sizeof *s);
    if (!s) return OUT_OF_MEMORY;
    s->ctx = current();
    pthread_mutex_lock(&lock);
    int slot = -1;
    for (int i = 0; i < nstreams; i++)
        if (!streams[i]) { slot = i; break; }
    if (slot < 0 && nstreams < 1024) slot = nstreams++;
    if (slot >= 0) streams[slot] = s;
    pthread_mutex_unlock(&lock);
    if (slot < 0) { free(s); return OUT_OF_MEMORY; }
    *out = s;
    return SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s) {
    NEED_CTX();
    if (!s) return SUCCESS; /* the null stream: nothing is ever queued on it */
    pthread_mutex_lock(&lock);
    drain(s, NULL);
    pthread_mutex_unlock(&lock);
    return SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream s) {
    NEED_CTX();
    if (!s) return INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    drain(s, NULL); /* the real driver finishes queued work after destroy returns */
    for (int i = 0; i < nstreams; i++)
        if (streams[i] == s) streams[i] = NULL;
    pthread_mutex_unlock(&lock);
    free(s);
    return SUCCESS;
}

CUresult cuEventCreate(CUevent *out, unsigned int flags) {
    (void)flags;
    NEED_CTX();
    if (!out) return INVALID_VALUE;
    struct fake_event *e = calloc(1, sizeof *e);
    if (!e) return OUT_OF_MEMORY;
    e->ctx = current();
    *out = e;
    return SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
    NEED_CTX();
    if (!e || !s) return INVALID_HANDLE;
    struct op *o = calloc(1, sizeof *o);
    if (!o) return OUT_OF_MEMORY;
    o->is_event = 1;
    o->event = e;
    pthread_mutex_lock(&lock);
    if (e->pending && e->pending != s) {
        pthread_mutex_unlock(&lock);
        free(o);
        fatal("event re-recorded on another stream while pending");
    }
    /* Re-recording a pending event moves its completion point: drop the older marker. */
    if (e->pending == s) {
        for (struct op *p = s->head; p; p = p->next)
            if (p->is_event && p->event == e) p->event = NULL, p->is_event = 2;
    }
    if (s->tail) s->tail->next = o; else s->head = o;
    s->tail = o;
    e->pending = s;
    pthread_mutex_unlock(&lock);
    return SUCCESS;
}

CUresult cuEventSynchronize(CUevent e) {
    NEED_INIT();
    if (!e) return INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    if (e->pending) drain(e->pending, e);
    pthread_mutex_unlock(&lock);
    return SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent e) {
    NEED_INIT();
    if (!e) return INVALID_HANDLE;
    pthread_mutex_lock(&lock);
    if (e->pending) {
        /* The real driver lets pending work finish; the marker must no longer name it. */
        for (struct op *p = e->pending->head; p; p = p->next)
            if (p->is_event && p->event == e) p->event = NULL, p->is_event = 2;
    }
    pthread_mutex_unlock(&lock);
    free(e);
    return SUCCESS;
}

static CUresult add_alloc(size_t len, int pinned, uint64_t *addr_out) {
    if (len == 0) return INVALID_VALUE;
    int dev = current()->dev;
    unsigned long long limit = pinned ? pinned_limit : mem_limit;
    unsigned long long *used = pinned ? &pinned_used : &mem_used[dev];
    if (limit && (len > limit || *used > limit - len)) return OUT_OF_MEMORY;
    int no_bytes = discard && !pinned;
    void *host = no_bytes ? NULL : malloc(len);
    struct alloc *a = calloc(1, sizeof *a);
    if ((!host && !no_bytes) || !a) { free(host); free(a); return OUT_OF_MEMORY; }
    if (host) memset(host, 0xA5, len); /* uninitialized device memory is not zero */
    a->host = (uintptr_t)host;
    a->len = len;
    a->pinned = pinned;
    a->dev = dev;
    if (pinned) {
        a->addr = (uint64_t)(uintptr_t)host;
    } else {
        a->addr = next_device_addr;
        next_device_addr += (len + 511) / 512 * 512 + 512;
    }
    a->next = allocs;
    allocs = a;
    *used += len;
    if (pinned && *used > stat_pinned_peak) stat_pinned_peak = *used;
    if (!pinned && *used > stat_device_peak) stat_device_peak = *used;
    *addr_out = a->addr;
    return SUCCESS;
}

static CUresult remove_alloc(uint64_t addr, int pinned) {
    struct alloc **p = &allocs;
    for (; *p; p = &(*p)->next) {
        if ((*p)->pinned == pinned && (*p)->addr == addr) break;
    }
    if (!*p) return INVALID_VALUE;
    struct alloc *a = *p;
    if (queued_use(a->addr, a->len, !pinned))
        fatal(pinned ? "pinned buffer freed while a queued copy still reads it"
                     : "device allocation freed while a queued copy still writes it");
    *p = a->next;
    if (pinned) pinned_used -= a->len; else mem_used[a->dev] -= a->len;
    free((void *)a->host);
    free(a);
    return SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr *out, size_t len) {
    NEED_CTX();
    if (!out) return INVALID_VALUE;
    uint64_t addr = 0;
    pthread_mutex_lock(&lock);
    CUresult r = add_alloc(len, 0, &addr);
    pthread_mutex_unlock(&lock);
    if (r == SUCCESS) *out = addr;
    return r;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    NEED_CTX();
    pthread_mutex_lock(&lock);
    CUresult r = remove_alloc(p, 0);
    pthread_mutex_unlock(&lock);
    if (r != SUCCESS) fatal("cuMemFree of an address that is not a live allocation");
    return r;
}

CUresult cuMemHostAlloc(void **out, size_t len, unsigned int flags) {
    (void)flags;
    NEED_CTX();
    if (!out) return INVALID_VALUE;
    uint64_t addr = 0;
    pthread_mutex_lock(&lock);
    CUresult r = add_alloc(len, 1, &addr);
    pthread_mutex_unlock(&lock);
    if (r == SUCCESS) *out = (void *)(uintptr_t)addr;
    return r;
}

CUresult cuMemFreeHost(void *p) {
    NEED_CTX();
    pthread_mutex_lock(&lock);
    CUresult r = remove_alloc((uint64_t)(uintptr_t)p, 1);
    pthread_mutex_unlock(&lock);
    if (r != SUCCESS) fatal("cuMemFreeHost of a pointer that is not a live pinned buffer");
    return r;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t len, CUstream s) {
    NEED_CTX();
    if (len == 0) return SUCCESS;
    if (!src || !s) return INVALID_VALUE;
    pthread_mutex_lock(&lock);
    int dst_ok = find(dst, len, 0) != NULL;
    int src_pinned = find((uint64_t)(uintptr_t)src, len, 1) != NULL;
    pthread_mutex_unlock(&lock);
    if (!dst_ok) fatal("cuMemcpyHtoDAsync: destination outside every live device allocation");
    if (!src_pinned && !async_pageable)
        fatal("cuMemcpyHtoDAsync: source is not inside one pinned buffer");
    struct op *o = calloc(1, sizeof *o);
    if (!o) return OUT_OF_MEMORY;
    o->dst = dst;
    o->src = src;
    o->len = len;
    pthread_mutex_lock(&lock);
    if (s->tail) s->tail->next = o; else s->head = o;
    s->tail = o;
    stat_async_copies++;
    stat_async_bytes += len;
    pthread_mutex_unlock(&lock);
    return SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t len) {
    NEED_CTX();
    if (len == 0) return SUCCESS;
    if (!src) return INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct alloc *d = find(dst, len, 0);
    if (!d) {
        pthread_mutex_unlock(&lock);
        fatal("cuMemcpyHtoD: destination outside every live device allocation");
    }
    if (!discard) memcpy((void *)(d->host + (dst - d->addr)), src, len);
    stat_sync_htod_bytes += len;
    pthread_mutex_unlock(&lock);
    return SUCCESS;
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t len) {
    NEED_CTX();
    if (len == 0) return SUCCESS;
    if (!dst) return INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct alloc *d = find(src, len, 0);
    if (!d) {
        pthread_mutex_unlock(&lock);
        fatal("cuMemcpyDtoH: source outside every live device allocation");
    }
    /* The copy runs on the legacy null stream, which does not wait for non-blocking streams:
     * an upload still queued there would race with this read on a real GPU. */
    if (queued_use(src, len, 1)) {
        pthread_mutex_unlock(&lock);
        fatal("cuMemcpyDtoH reads a range that a queued upload has not written yet");
    }
    if (discard) {
        pthread_mutex_unlock(&lock);
        fatal("cuMemcpyDtoH with FAKE_CUDA_DISCARD=1: device memory holds no bytes");
    }
    memcpy(dst, (const void *)(d->host + (src - d->addr)), len);
    stat_dtoh_bytes += len;
    pthread_mutex_unlock(&lock);
    return SUCCESS;
}
