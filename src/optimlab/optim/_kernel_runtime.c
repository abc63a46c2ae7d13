/* The hand-written runtime of optimlab's single-pass CPU kernels: threads, dispatch, step
 * counters, square roots. The loops themselves are generated from the kernel descriptions
 * (each optimizer's, beside its rule, by optimlab/optim/_kernelgen.py) and spliced in where the
 * marker below stands; _fused.py compiles the result on first use with the system C
 * compiler, loads it with ctypes and passes raw data pointers. Nothing here knows a kernel:
 * ids, arrays and scalars all come from the generated table.
 *
 * Arithmetic: each generated loop does the description's operations in the tensor's dtype
 * (float or double), scalars computed in double by Python and rounded to the dtype here, as
 * torch does; a multiply-add (OL_FMA_*) only where the description says so (torch's vectorised
 * CPU kernels compute add(alpha=), addcmul, lerp as one), rounded as torch's build rounds it
 * (below); compiled with -ffp-contract=off so the compiler adds no other contraction. Square roots go through ol_sqrt_*: torch's own routine (MKL's vsSqrt/vdSqrt
 * in torch's CPU wheels, which is not correctly rounded everywhere) when _fused.py found it
 * and checked it against torch.sqrt, else the C library's correctly rounded sqrt.
 *
 * Threads: the concatenated element space of all tensors is cut into chunks that the
 * threads take in turn: torch's own OpenMP threads where _fused.py could build against
 * torch's libgomp (see run_job_threads), else the calling thread and a small persistent
 * pthread pool. ctypes releases the GIL during the call.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OL_EXPORT __attribute__((visibility("default")))

/* A description's fma(a, b, c), as torch's CPU ops round a·b + c on this machine: once (fused;
 * its AVX2 and AVX-512 kernels), or the product and then the sum (its x86 DEFAULT capability:
 * no FMA instructions, or ATEN_CPU_CAPABILITY=default). _fused.py asks torch's ops which, and
 * passes -DOL_FUSED_MULADD=1 or 0. */
#if !defined(OL_FUSED_MULADD)
#error "OL_FUSED_MULADD (0 or 1) must be defined"
#elif OL_FUSED_MULADD
#define OL_FMA_f32(a, b, c) fmaf((a), (b), (c))
#define OL_FMA_f64(a, b, c) fma((a), (b), (c))
#else
#define OL_FMA_f32(a, b, c) ((a) * (b) + (c))
#define OL_FMA_f64(a, b, c) ((a) * (b) + (c))
#endif
OL_EXPORT int ol_fused_muladd(void) { return OL_FUSED_MULADD; }

/* Elements per block of a loop with square roots: its stages keep what a later stage
 * needs in stack buffers of this many elements (in cache), between calls of ol_sqrt_*. */
#define OL_BLOCK 1024

/* Elements per unit of work of a reduction pass: tensor-aligned, so a tensor's partial sums,
 * and their order, do not depend on the threads. */
#define OL_ITEM 16384

/* a loop over cnt elements (a: the arrays' pointers, advanced to the first); mid: the tensor's
 * numbers computed between the passes of a two-pass kernel (else NULL) */
typedef void (*ol_fn)(char *const *a, int64_t cnt, const double *h, const double *ts, const double *mid);
/* a two-pass kernel's first pass: adds the reductions of its elements to acc[nred] */
typedef void (*ol_red_fn)(char *const *a, int64_t cnt, const double *h, const double *ts, double *acc);
/* between the passes, per tensor: mid[nmid] from the reductions' sums[nred] */
typedef void (*ol_mid_fn)(const double *sums, const double *h, const double *ts, double *mid);
typedef struct {
    int narrays;   /* pointers the loop takes, in the order of the description's arrays */
    ol_fn f32, f64;
    int nred, nmid;  /* two-pass kernels: reductions per tensor, numbers between the passes */
    ol_red_fn r32, r64;
    ol_mid_fn m32, m64;
} ol_variant;

/* ------------------------------------------------------------------- square roots
 * torch's sqrt on the CPU calls MKL's vector routine (vmsSqrt/vmdSqrt, high accuracy) on
 * contiguous runs; the same routine, called on each block, gives the same bits. The Fortran
 * entry points (VMSSQRT_, VMDSQRT_: all arguments by reference, 32-bit n) are what libtorch_cpu
 * exports; _fused.py looks them up and hands them here, after checking them against torch. */
typedef void (*ol_vml_fn)(const int32_t *n, const void *in, void *out, const int64_t *mode);
typedef int (*ol_threads_fn)(int);
static ol_vml_fn ol_vml_s = NULL, ol_vml_d = NULL;
static int64_t ol_vml_mode = 0;
/* MKL_Set_Num_Threads_Local: MKL would start an OpenMP team inside each call (a team per
 * pool thread, and a hang in a forked child); the kernels' threads run it serially. */
static ol_threads_fn ol_mkl_local = NULL;

static int ol_serial_begin(void) { return ol_mkl_local ? ol_mkl_local(1) : 0; }
static void ol_serial_end(int previous) { if (ol_mkl_local) ol_mkl_local(previous); }

static void OL_SQRT_f32(int64_t m, float *x) {
    if (ol_vml_s) {
        int32_t n = (int32_t)m;
        ol_vml_s(&n, x, x, &ol_vml_mode);
        return;
    }
    for (int64_t k = 0; k < m; k++) x[k] = sqrtf(x[k]);
}

static void OL_SQRT_f64(int64_t m, double *x) {
    if (ol_vml_d) {
        int32_t n = (int32_t)m;
        ol_vml_d(&n, x, x, &ol_vml_mode);
        return;
    }
    for (int64_t k = 0; k < m; k++) x[k] = sqrt(x[k]);
}

/* fs, fd: torch's routines (or NULL: the C library's sqrt); mode: the VML mode torch passes;
 * serial: MKL_Set_Num_Threads_Local (or NULL). */
OL_EXPORT void ol_set_sqrt(void *fs, void *fd, int64_t mode, void *serial) {
    ol_vml_s = (ol_vml_fn)fs;
    ol_vml_d = (ol_vml_fn)fd;
    ol_vml_mode = mode;
    ol_mkl_local = (ol_threads_fn)serial;
}

/* x ← sqrt(x) as the kernels compute it, block by block (for _fused.py's check). */
OL_EXPORT void ol_sqrt(int is_double, int64_t n, void *x) {
    int previous = ol_serial_begin();
    for (int64_t j0 = 0; j0 < n; j0 += OL_BLOCK) {
        int64_t m = n - j0 < OL_BLOCK ? n - j0 : OL_BLOCK;
        if (is_double) OL_SQRT_f64(m, (double *)x + j0);
        else OL_SQRT_f32(m, (float *)x + j0);
    }
    ol_serial_end(previous);
}

/* ------------------------------------------------------------- the generated loops */
/* @generated-kernels@ */

typedef struct {
    int kind, is_double;
    int64_t n;              /* tensors */
    const int64_t *numels;  /* n */
    const int64_t *offsets; /* n + 1 prefix sums */
    void *const *ptrs;      /* array-major: ptrs[a * stride + i] */
    int64_t stride;         /* the pointer table's row length (n, or more for a batch of tensors) */
    const double *ts;       /* per-tensor scalars, tensor-major: ts[i * nts + k] */
    int nts;
    const double *h;        /* scalars of the call */
    int64_t chunk;          /* units of work (elements, or items) per chunk handed to a thread */
    int items;              /* 0: the units are elements; 1: reduction items (OL_ITEM elements of a tensor) */
    int64_t units;          /* elements or items in all */
    const int64_t *item_off; /* items: n + 1 prefix sums of the tensors' items */
    double *partial;        /* items: nred partial sums per item */
    const double *mid;      /* second pass: nmid numbers per tensor */
    int nmid;
} ol_job;

/* ---------------------------------------------------------------------- dispatch */
/* Elements [lo, hi) of tensor i: the variant's loop on pointers advanced to lo. */
static void run_tensor(const ol_job *job, int64_t i, int64_t lo, int64_t hi) {
    const ol_variant *v = &ol_variants[job->kind];
    char *a[OL_MAX_ARRAYS];
    const int64_t size = job->is_double ? 8 : 4;
    for (int k = 0; k < v->narrays; k++) a[k] = (char *)job->ptrs[k * job->stride + i] + lo * size;
    const double *ts = job->ts ? job->ts + i * job->nts : NULL;
    const double *mid = job->mid ? job->mid + i * job->nmid : NULL;
    (job->is_double ? v->f64 : v->f32)(a, hi - lo, job->h, ts, mid);
}

/* Reduction item k (OL_ITEM elements of one tensor, from its start): the first pass. */
static void run_item(const ol_job *job, int64_t k) {
    const int64_t *io = job->item_off;
    int64_t lo = 0, hi = job->n; /* the tensor with io[i] <= k < io[i + 1] */
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (io[mid + 1] > k) hi = mid; else lo = mid + 1;
    }
    const int64_t i = lo, first = (k - io[i]) * OL_ITEM;
    const int64_t last = first + OL_ITEM < job->numels[i] ? first + OL_ITEM : job->numels[i];
    const ol_variant *v = &ol_variants[job->kind];
    char *a[OL_MAX_ARRAYS];
    const int64_t size = job->is_double ? 8 : 4;
    for (int r = 0; r < v->narrays; r++) a[r] = (char *)job->ptrs[r * job->stride + i] + first * size;
    const double *ts = job->ts ? job->ts + i * job->nts : NULL;
    (job->is_double ? v->r64 : v->r32)(a, last - first, job->h, ts, job->partial + k * v->nred);
}

/* Elements [begin, end) of the concatenation of all tensors. */
static void run_range(const ol_job *job, int64_t begin, int64_t end) {
    if (begin >= end) return;
    if (job->items) {
        for (int64_t k = begin; k < end; k++) run_item(job, k);
        return;
    }
    const int64_t *off = job->offsets;
    int64_t lo = 0, hi = job->n; /* first tensor with off[i + 1] > begin */
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (off[mid + 1] > begin) hi = mid; else lo = mid + 1;
    }
    for (int64_t i = lo; i < job->n && off[i] < end; i++) {
        int64_t a = begin > off[i] ? begin - off[i] : 0;
        int64_t b = (end < off[i + 1] ? end : off[i + 1]) - off[i];
        if (b > a) run_tensor(job, i, a, b);
    }
}

/* ----------------------------------------------------------- persistent thread pool
 * Work is handed out in chunks of job->chunk elements from an atomic counter: whichever
 * thread is running takes the next chunk, so a worker the OS has not scheduled yet (a
 * busy machine) delays nothing: the caller simply does more chunks itself. A worker joins
 * a job only while it is open; the caller closes it once every chunk is taken and waits
 * only for workers that joined. */
#define OL_MAX_WORKERS 63

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_go = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER; /* one pooled job at a time */
static int pool_workers = 0;
static unsigned long pool_gen = 0;
static int pool_open = 0;    /* the current job still accepts workers */
static int pool_active = 0;  /* workers inside the current job */
static int pool_wanted = 0;  /* workers asked to join the current job */
static const ol_job *pool_job = NULL;
static int64_t pool_nchunks = 0;
static int64_t pool_next = 0; /* next chunk (atomic) */
static pid_t pool_pid = 0;
static unsigned long pool_start_gen[OL_MAX_WORKERS + 1]; /* gen a worker starts from */

/* Take chunks from the shared counter *next until none is left (every thread of a job). */
static void run_chunks_from(const ol_job *job, int64_t nchunks, int64_t *next) {
    const int64_t total = job->units;
    for (;;) {
        int64_t c = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
        if (c >= nchunks) return;
        int64_t begin = c * job->chunk;
        int64_t end = begin + job->chunk < total ? begin + job->chunk : total;
        run_range(job, begin, end);
    }
}

static void run_chunks(const ol_job *job, int64_t nchunks) { run_chunks_from(job, nchunks, &pool_next); }

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg; /* 1 .. pool_workers */
    pthread_mutex_lock(&pool_mu);
    unsigned long seen = pool_start_gen[id];
    for (;;) {
        while (pool_gen == seen) pthread_cond_wait(&pool_go, &pool_mu);
        seen = pool_gen;
        if (!pool_open || id > pool_wanted) continue;
        const ol_job *job = pool_job;
        int64_t nchunks = pool_nchunks;
        pool_active++;
        pthread_mutex_unlock(&pool_mu);
        int previous = ol_serial_begin();
        run_chunks(job, nchunks);
        ol_serial_end(previous);
        pthread_mutex_lock(&pool_mu);
        if (--pool_active == 0 && !pool_open) pthread_cond_signal(&pool_done);
    }
    return NULL;
}

/* After fork() only the forking thread exists: forget the pool and start afresh. */
static void pool_reset_if_forked(void) {
    pid_t pid = getpid();
    if (pool_pid != pid) {
        pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
        pthread_cond_t c = PTHREAD_COND_INITIALIZER;
        pool_mu = m;
        call_mu = m;
        pool_go = c;
        pool_done = c;
        pool_workers = 0;
        pool_gen = 0;
        pool_open = 0;
        pool_active = 0;
        pool_pid = pid;
    }
}

/* Ensure `want` workers exist (called with call_mu held); returns how many exist. */
static int pool_grow(int want) {
    if (want > OL_MAX_WORKERS) want = OL_MAX_WORKERS;
    while (pool_workers < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        pthread_mutex_lock(&pool_mu);
        int id = pool_workers + 1;
        pool_start_gen[id] = pool_gen; /* jobs posted from now on are this worker's */
        pthread_mutex_unlock(&pool_mu);
        int rc = pthread_create(&th, &attr, worker_main, (void *)(intptr_t)id);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pthread_mutex_lock(&pool_mu);
        pool_workers++;
        pthread_mutex_unlock(&pool_mu);
    }
    return pool_workers;
}

static void run_job_threads(const ol_job *job, int nthreads);

static void run_job(const ol_job *job, int nthreads) {
    int previous = ol_serial_begin();
    run_job_threads(job, nthreads);
    ol_serial_end(previous);
}

static void run_job_pool(const ol_job *job, int nthreads) {
    const int64_t total = job->units;
    const int64_t nchunks = (total + job->chunk - 1) / job->chunk;
    if (nthreads > nchunks) nthreads = (int)nchunks;
    if (nthreads > 1) {
        static pthread_mutex_t fork_guard = PTHREAD_MUTEX_INITIALIZER;
        pthread_mutex_lock(&fork_guard);
        pool_reset_if_forked();
        pthread_mutex_unlock(&fork_guard);
        if (pthread_mutex_trylock(&call_mu) == 0) { /* busy (another thread's step): run alone */
            int workers = pool_grow(nthreads - 1);
            if (workers > nthreads - 1) workers = nthreads - 1;
            if (workers > 0) {
                pthread_mutex_lock(&pool_mu);
                pool_job = job;
                pool_nchunks = nchunks;
                __atomic_store_n(&pool_next, 0, __ATOMIC_RELAXED);
                pool_wanted = workers;
                pool_open = 1;
                pool_gen++;
                pthread_cond_broadcast(&pool_go);
                pthread_mutex_unlock(&pool_mu);
                run_chunks(job, nchunks);
                pthread_mutex_lock(&pool_mu);
                pool_open = 0;
                while (pool_active > 0) pthread_cond_wait(&pool_done, &pool_mu);
                pool_job = NULL;
                pthread_mutex_unlock(&pool_mu);
                pthread_mutex_unlock(&call_mu);
                return;
            }
            pthread_mutex_unlock(&call_mu);
        }
    }
    run_range(job, 0, total);
}

#ifdef _OPENMP
#include <omp.h>
/* Built with -fopenmp only where the process's OpenMP runtime is torch's libgomp (same
 * soname: the loader gives this library that one), so the kernels run on torch's own threads:
 * no second pool spinning against torch's workers for the cores. libgomp does not survive
 * fork() (a child's parallel region hangs, torch's own ops too): a forked child takes the pool. */
static pid_t ol_load_pid = 0;
__attribute__((constructor)) static void ol_note_load_pid(void) { ol_load_pid = getpid(); }

static void run_job_threads(const ol_job *job, int nthreads) {
    const int64_t total = job->units;
    const int64_t nchunks = (total + job->chunk - 1) / job->chunk;
    if (nthreads > nchunks) nthreads = (int)nchunks;
    if (nthreads > 1 && getpid() != ol_load_pid) {
        run_job_pool(job, nthreads);
        return;
    }
    if (nthreads > 1 && !omp_in_parallel()) {
        int64_t next = 0;
#pragma omp parallel num_threads(nthreads)
        {
            int previous = ol_serial_begin();
            run_chunks_from(job, nchunks, &next);
            ol_serial_end(previous);
        }
        return;
    }
    run_range(job, 0, total);
}
#else
static void run_job_threads(const ol_job *job, int nthreads) { run_job_pool(job, nthreads); }
#endif

/* ------------------------------------------------------------------ entry points */

/* 1 where the kernels run on the process's OpenMP threads (built with -fopenmp), else 0. */
OL_EXPORT int ol_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Both passes of a two-pass variant over tensors [i0, i1) of `all` (whose offsets are
 * unused): reductions per tensor (in a fixed order of items), the numbers between, the
 * update. Returns 0, or -2 when out of memory. */
static int run_two_pass(const ol_job *all, int64_t i0, int64_t i1, int nthreads) {
    const ol_variant *v = &ol_variants[all->kind];
    const int64_t n = i1 - i0;
    const int64_t *numels = all->numels + i0;
    const double *ts = all->ts ? all->ts + i0 * all->nts : NULL;
    int64_t *off = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    int64_t *item_off = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    double *sums = (double *)calloc((size_t)(n * v->nred + 1), sizeof(double));
    double *mid = (double *)malloc(sizeof(double) * (size_t)(n * v->nmid + 1));
    double *partial = NULL;
    if (off && item_off && sums && mid) {
        off[0] = item_off[0] = 0;
        for (int64_t i = 0; i < n; i++) {
            off[i + 1] = off[i] + numels[i];
            item_off[i + 1] = item_off[i] + (numels[i] + OL_ITEM - 1) / OL_ITEM;
        }
        partial = (double *)calloc((size_t)(item_off[n] * v->nred + 1), sizeof(double));
    }
    int rc = partial ? 0 : -2;
    if (rc == 0) {
        ol_job job = *all;
        job.n = n;
        job.numels = numels;
        job.offsets = off;
        job.ptrs = all->ptrs + i0; /* (rows keep their stride) */
        job.ts = ts;
        job.units = off[n];
        ol_job first = job;
        first.items = 1;
        first.units = item_off[n];
        first.item_off = item_off;
        first.partial = partial;
        first.chunk = job.chunk / OL_ITEM > 0 ? job.chunk / OL_ITEM : 1;
        run_job(&first, nthreads);
        for (int64_t i = 0; i < n; i++) {
            const double *ts_i = ts ? ts + i * job.nts : NULL;
            for (int64_t k = item_off[i]; k < item_off[i + 1]; k++)
                for (int r = 0; r < v->nred; r++) sums[i * v->nred + r] += partial[k * v->nred + r];
            (job.is_double ? v->m64 : v->m32)(sums + i * v->nred, job.h, ts_i, mid + i * v->nmid);
        }
        job.mid = mid;
        job.nmid = v->nmid;
        run_job(&job, nthreads);
    }
    free(partial);
    free(mid);
    free(sums);
    free(item_off);
    free(off);
    return rc;
}

/* One step of variant `kind` (an index into the generated table) over n tensors. ptrs:
 * narrays * n data pointers (array-major, the variant's arrays in order), numels: n element
 * counts, ts: per-tensor scalars (tensor-major, nts per tensor), h: the call's scalars;
 * nthreads threads at most, taking `chunk` elements at a time. A two-pass variant goes over
 * consecutive tensors of about `batch_bytes` bytes (all its arrays) at a time, both passes
 * each, so that the second finds the first's data in cache (a larger tensor: alone).
 * Returns 0, -1 for an unknown variant, -2 when out of memory. */
OL_EXPORT int ol_step(int kind, int is_double, int nthreads, int64_t chunk, int64_t n,
                      const int64_t *numels, void *const *ptrs, const double *ts, int nts,
                      const double *h, int64_t batch_bytes) {
    if (kind < 0 || kind >= OL_NVARIANTS) return -1;
    if (chunk < 1) chunk = 1;
    const ol_variant *v = &ol_variants[kind];
    ol_job job = {kind, is_double, n, numels, NULL, ptrs, n, ts, nts, h, chunk, 0, 0, NULL, NULL, NULL, 0};
    if (v->nred != 0) { /* two passes: reductions (per tensor, in a fixed order), numbers between, update */
        const int64_t per_element = (is_double ? 8 : 4) * (int64_t)v->narrays;
        int rc = 0;
        for (int64_t i0 = 0; i0 < n && rc == 0;) {
            int64_t i1 = i0 + 1, bytes = numels[i0] * per_element;
            while (i1 < n && bytes + numels[i1] * per_element <= batch_bytes) bytes += numels[i1++] * per_element;
            rc = run_two_pass(&job, i0, i1, nthreads);
            i0 = i1;
        }
        return rc;
    }
    int64_t stack_off[257];
    int64_t *off = n < 256 ? stack_off : (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!off) return -2;
    off[0] = 0;
    for (int64_t i = 0; i < n; i++) off[i + 1] = off[i] + numels[i];
    job.offsets = off;
    job.units = off[n];
    run_job(&job, nthreads);
    if (off != stack_off) free(off);
    return 0;
}

OL_EXPORT int ol_variant_count(void) { return OL_NVARIANTS; }

/* Step counters: t ← t + 1 in each counter's dtype (0-dim float or double tensors), as
 * torch._foreach_add_(steps, 1) does, and the new values as doubles (what .item() reads). */
OL_EXPORT void ol_advance(int64_t n, void *const *ptrs, const int32_t *is_double, double *out) {
    for (int64_t i = 0; i < n; i++) {
        if (is_double[i]) {
            double *p = (double *)ptrs[i];
            *p = *p + 1.0;
            out[i] = *p;
        } else {
            float *p = (float *)ptrs[i];
            *p = *p + 1.0f;
            out[i] = (double)*p;
        }
    }
}

/* Per-tensor 0-dim factors (NAdam's μ-products): p ← p·f in each one's dtype (f rounded to
 * it), as torch._foreach_mul_(ps, fs) does, and the new values as doubles. */
OL_EXPORT void ol_scale(int64_t n, void *const *ptrs, const int32_t *is_double, const double *factors,
                        double *out) {
    for (int64_t i = 0; i < n; i++) {
        if (is_double[i]) {
            double *p = (double *)ptrs[i];
            *p = *p * factors[i];
            out[i] = *p;
        } else {
            float *p = (float *)ptrs[i];
            *p = *p * (float)factors[i];
            out[i] = (double)*p;
        }
    }
}
