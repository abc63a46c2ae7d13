/* Single-pass CPU kernels for the optimizers torch has no fused kernel for:
 * RMSprop (plain / centred / momentum), Adadelta, Adamax, NAdam.
 *
 * Plain C, no torch headers: _fused.py compiles this file on first use with the system C
 * compiler (about a second), loads it with ctypes and passes raw data pointers.
 *
 * One element loop per optimizer reads every operand once and writes every result once.
 * Inside the loop the arithmetic is that of the foreach rule in _rules.py, operation by
 * operation, in the tensor's dtype (float or double), with the scalars computed in double
 * by the caller and rounded to the dtype here, as torch does. Where torch's vectorised CPU
 * kernels fuse a multiply-add (lerp, add with alpha, addcmul) this code calls fma() too;
 * it is compiled with -ffp-contract=off so the compiler adds no other contraction. The
 * one systematic difference: sqrt here is IEEE (correctly rounded), while torch's sqrt
 * kernel goes through MKL's vsSqrt/vdSqrt, which is off by one ulp on some inputs. So the
 * fused path matches the foreach rule bit for bit where no sqrt is involved (Adamax) and
 * to about an ulp per step elsewhere.
 *
 * Threads: the concatenated element space of all tensors is cut into chunks that the
 * calling thread and a small persistent pthread pool take in turn (no OpenMP: torch brings
 * its own runtime). ctypes releases the GIL during the call.
 */
#ifndef OL_TYPED_PASS

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OL_EXPORT __attribute__((visibility("default")))
#define OL_INLINE static inline __attribute__((always_inline))

/* Kernel ids (keep in sync with _fused.py). */
enum { K_RMSPROP = 0, K_ADADELTA = 1, K_ADAMAX = 2, K_NADAM = 3 };
/* Flags. */
enum { F_MAXIMIZE = 1, F_WD = 2, F_CENTERED = 4, F_MOMENTUM = 8, F_DECOUPLED = 16 };

typedef struct {
    int kind, is_double, flags;
    int64_t n;              /* tensors */
    const int64_t *numels;  /* n */
    const int64_t *offsets; /* n + 1 prefix sums */
    void *const *ptrs;      /* narrays * n, array-major: ptrs[a * n + i] */
    const double *ts;       /* per-tensor scalars, tensor-major: ts[i * nts + k] */
    int nts;
    const double *h;        /* global hyperparameters */
    int64_t chunk;          /* elements per unit of work handed to a thread */
} ol_job;

#define OL_CAT2(a, b) a##b
#define OL_CAT(a, b) OL_CAT2(a, b)

/* ------------------------------------------------------------------ typed kernels */
#define OL_TYPED_PASS 1
#define T float
#define SFX _f32
#define FMA fmaf
#define SQRT sqrtf
#define FABS fabsf
#include __FILE__
#undef T
#undef SFX
#undef FMA
#undef SQRT
#undef FABS
#define T double
#define SFX _f64
#define FMA fma
#define SQRT sqrt
#define FABS fabs
#include __FILE__
#undef T
#undef SFX
#undef FMA
#undef SQRT
#undef FABS
#undef OL_TYPED_PASS

/* ---------------------------------------------------------------------- dispatch */
static void run_tensor(const ol_job *job, int64_t i, int64_t lo, int64_t hi) {
    if (job->is_double)
        run_tensor_f64(job, i, lo, hi);
    else
        run_tensor_f32(job, i, lo, hi);
}

/* Elements [begin, end) of the concatenation of all tensors. */
static void run_range(const ol_job *job, int64_t begin, int64_t end) {
    if (begin >= end) return;
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

static void run_chunks(const ol_job *job, int64_t nchunks) {
    const int64_t total = job->offsets[job->n];
    for (;;) {
        int64_t c = __atomic_fetch_add(&pool_next, 1, __ATOMIC_RELAXED);
        if (c >= nchunks) return;
        int64_t begin = c * job->chunk;
        int64_t end = begin + job->chunk < total ? begin + job->chunk : total;
        run_range(job, begin, end);
    }
}

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
        run_chunks(job, nchunks);
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

static void run_job(const ol_job *job, int nthreads) {
    const int64_t total = job->offsets[job->n];
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

/* ------------------------------------------------------------------ entry points */

/* One optimizer step over n tensors. ptrs: narrays * n data pointers (array-major:
 * rmsprop θ, g, v[, ḡ if centred][, b if momentum]; adadelta θ, g, v, u; adamax θ, g, m, u;
 * nadam θ, g, m, v),
 * numels: n element counts, ts: per-tensor scalars (tensor-major, nts per tensor),
 * h: hyperparameters; nthreads threads at most, taking `chunk` elements at a time.
 * Returns 0, or -1 for an unknown kernel. */
OL_EXPORT int ol_step(int kind, int is_double, int flags, int nthreads, int64_t chunk, int64_t n,
                      const int64_t *numels, void *const *ptrs, const double *ts, int nts,
                      const double *h) {
    if (kind < K_RMSPROP || kind > K_NADAM) return -1;
    if (chunk < 1) chunk = 1;
    int64_t stack_off[257];
    int64_t *off = n < 256 ? stack_off : (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!off) return -2;
    off[0] = 0;
    for (int64_t i = 0; i < n; i++) off[i + 1] = off[i] + numels[i];
    ol_job job = {kind, is_double, flags, n, numels, off, ptrs, ts, nts, h, chunk};
    run_job(&job, nthreads);
    if (off != stack_off) free(off);
    return 0;
}

/* NAdam's scalar bookkeeping, done here rather than with 3n tiny torch ops:
 * Π_i ← Π_i·μ_i in the dtype of Π_i (0-dim float or double tensors), then per tensor
 * out[3i..3i+2] = (1 − β2ᵗ, −γ(1 − μ)/(1 − Π), −γ·μ_next/(1 − Π·μ_next)), in double
 * exactly as _rules.nadam computes them in Python. */
OL_EXPORT void ol_nadam_scalars(int64_t n, void *const *mu_ptrs, const int32_t *mu_is_double,
                                const double *mus, const double *mu_nexts, const double *bc2,
                                double lr, double *out) {
    for (int64_t i = 0; i < n; i++) {
        double prod;
        if (mu_is_double[i]) {
            double *p = (double *)mu_ptrs[i];
            *p = *p * mus[i];
            prod = *p;
        } else {
            float *p = (float *)mu_ptrs[i];
            *p = *p * (float)mus[i];
            prod = (double)*p;
        }
        out[3 * i] = bc2[i];
        out[3 * i + 1] = -lr * (1.0 - mus[i]) / (1.0 - prod);
        out[3 * i + 2] = -lr * mu_nexts[i] / (1.0 - prod * mu_nexts[i]);
    }
}

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

OL_EXPORT int ol_version(void) { return 3; }

#else /* OL_TYPED_PASS: the kernels for one dtype T ------------------------------- */

#define TN(name) OL_CAT(name, SFX)

/* torch's lerp(a, b, w): w < 0.5 ? a + w·(b − a) : b − (b − a)·(1 − w), each one fma
 * (its vectorised kernel: fma(small ? w : w − 1, b − a, small ? a : b)). */
OL_INLINE T TN(lerp)(T a, T b, T wc, int small) {
    return FMA(wc, b - a, small ? a : b);
}

/* torch.maximum: NaN if either is NaN. */
OL_INLINE T TN(maximum)(T a, T b) {
    T r = a < b ? b : a;
    return (a != a || b != b) ? (T)NAN : r;
}

/* The gradient the rule sees: −g if maximize (sgn = −1: exact), then + λ·θ as torch's
 * add(g, θ, alpha=λ) computes it, fma(θ, λ, g). */
OL_INLINE T TN(eff_grad)(T g, T p, T sgn, T wd, int flags) {
    g = g * sgn;
    if (flags & F_WD) g = FMA(p, wd, g);
    return g;
}

/* h: lr, alpha, eps, momentum, weight_decay, 1 − alpha, ±1 (maximize) */
OL_INLINE void TN(rmsprop_body)(T *restrict p, const T *restrict g, T *restrict v, T *restrict ga,
                                T *restrict b, int64_t n, const double *h, const int flags) {
    const T nlr = (T)(-h[0]), alpha = (T)h[1], eps = (T)h[2], mom = (T)h[3], wd = (T)h[4];
    const T c = (T)h[5], m1 = (T)-1, sgn = (T)h[6];
    const int small = (double)c < 0.5;
    const T wc = small ? c : c - (T)1;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) {
        T pj = p[j];
        T gj = TN(eff_grad)(g[j], pj, sgn, wd, flags);
        T vj = v[j] * alpha;
        vj = FMA(c * gj, gj, vj); /* torch's addcmul: fma(value·t1, t2, self) */
        v[j] = vj;
        T avg;
        if (flags & F_CENTERED) {
            T gaj = TN(lerp)(ga[j], gj, wc, small);
            ga[j] = gaj;
            avg = SQRT(FMA(m1 * gaj, gaj, vj));
        } else {
            avg = SQRT(vj);
        }
        avg = avg + eps;
        if (flags & F_MOMENTUM) {
            T bj = b[j] * mom;
            bj = bj + gj / avg;
            b[j] = bj;
            p[j] = FMA(bj, nlr, pj);
        } else {
            p[j] = pj + nlr * gj / avg;
        }
    }
}

/* h: lr, rho, eps, weight_decay, 1 − rho, ±1 */
OL_INLINE void TN(adadelta_body)(T *restrict p, const T *restrict g, T *restrict v, T *restrict u,
                                 int64_t n, const double *h, const int flags) {
    const T nlr = (T)(-h[0]), rho = (T)h[1], eps = (T)h[2], wd = (T)h[3], c = (T)h[4], sgn = (T)h[5];
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) {
        T pj = p[j];
        T gj = TN(eff_grad)(g[j], pj, sgn, wd, flags);
        T vj = v[j] * rho;
        vj = FMA(c * gj, gj, vj); /* torch's addcmul: fma(value·t1, t2, self) */
        v[j] = vj;
        T std = SQRT(vj + eps);
        T uj = u[j];
        T d = SQRT(uj + eps);
        d = d / std;
        d = d * gj;
        uj = uj * rho;
        u[j] = FMA(c * d, d, uj);
        p[j] = FMA(d, nlr, pj);
    }
}

/* h: beta2, eps, weight_decay, 1 − beta1, ±1; ts: step_size = −lr/(1 − β1ᵗ) */
OL_INLINE void TN(adamax_body)(T *restrict p, const T *restrict g, T *restrict m, T *restrict u,
                               int64_t n, const double *h, const double *ts, const int flags) {
    const T beta2 = (T)h[0], eps = (T)h[1], wd = (T)h[2], w = (T)h[3], sgn = (T)h[4];
    const T step_size = (T)ts[0];
    const int small = (double)w < 0.5;
    const T wc = small ? w : w - (T)1;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) {
        T pj = p[j];
        T gj = TN(eff_grad)(g[j], pj, sgn, wd, flags);
        T mj = TN(lerp)(m[j], gj, wc, small);
        m[j] = mj;
        T uj = TN(maximum)(u[j] * beta2, FABS(gj) + eps);
        u[j] = uj;
        p[j] = pj + step_size * mj / uj;
    }
}

/* h: beta2, eps, weight_decay, 1 − beta1, 1 − beta2, decay factor (1 − lr·wd), ±1;
 * ts: 1 − β2ᵗ, grad_coef, avg_coef */
OL_INLINE void TN(nadam_body)(T *restrict p, const T *restrict g, T *restrict m, T *restrict v,
                              int64_t n, const double *h, const double *ts, const int flags) {
    const T beta2 = (T)h[0], eps = (T)h[1], wd = (T)h[2], w = (T)h[3], c = (T)h[4];
    const T decay = (T)h[5], sgn = (T)h[6];
    const T bc2 = (T)ts[0], gcoef = (T)ts[1], acoef = (T)ts[2];
    const int small = (double)w < 0.5;
    const T wc = small ? w : w - (T)1;
    const int l2 = (flags & F_DECOUPLED) ? (flags & ~F_WD) : flags;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) {
        T pj = p[j];
        T gj = TN(eff_grad)(g[j], pj, sgn, wd, l2);
        if ((flags & F_DECOUPLED) && (flags & F_WD)) pj = pj * decay;
        T mj = TN(lerp)(m[j], gj, wc, small);
        m[j] = mj;
        T vj = v[j] * beta2;
        vj = FMA(c * gj, gj, vj); /* torch's addcmul: fma(value·t1, t2, self) */
        v[j] = vj;
        T den = SQRT(vj / bc2) + eps;
        pj = pj + gcoef * gj / den;
        p[j] = pj + acoef * mj / den;
    }
}

/* Specialise each body on its flags so every loop is branch-free and vectorised. */
static void TN(run_tensor)(const ol_job *job, int64_t i, int64_t lo, int64_t hi) {
    const int64_t n = job->n, cnt = hi - lo;
    const double *h = job->h;
    const double *ts = job->ts ? job->ts + i * job->nts : NULL;
#define ARR(a) (((T *)job->ptrs[(a) * n + i]) + lo)
    const int f = job->flags;
    switch (job->kind) {
    case K_RMSPROP: {
        T *p = ARR(0), *g = ARR(1), *v = ARR(2);
        T *ga = (f & F_CENTERED) ? ARR(3) : NULL;
        T *b = (f & F_MOMENTUM) ? ARR((f & F_CENTERED) ? 4 : 3) : NULL;
#define RMS(FL) TN(rmsprop_body)(p, g, v, ga, b, cnt, h, FL); break;
        switch (f & (F_WD | F_CENTERED | F_MOMENTUM)) {
        case 0: RMS(0)
        case 2: RMS(2)
        case 4: RMS(4)
        case 6: RMS(6)
        case 8: RMS(8)
        case 10: RMS(10)
        case 12: RMS(12)
        case 14: RMS(14)
        }
#undef RMS
        break;
    }
    case K_ADADELTA: {
        T *p = ARR(0), *g = ARR(1), *v = ARR(2), *u = ARR(3);
#define ADD(FL) TN(adadelta_body)(p, g, v, u, cnt, h, FL);
        if (f & F_WD) { ADD(F_WD) } else { ADD(0) }
#undef ADD
        break;
    }
    case K_ADAMAX: {
        T *p = ARR(0), *g = ARR(1), *m = ARR(2), *u = ARR(3);
#define AMX(FL) TN(adamax_body)(p, g, m, u, cnt, h, ts, FL);
        if (f & F_WD) { AMX(F_WD) } else { AMX(0) }
#undef AMX
        break;
    }
    case K_NADAM: {
        T *p = ARR(0), *g = ARR(1), *m = ARR(2), *v = ARR(3);
#define NAD(FL) TN(nadam_body)(p, g, m, v, cnt, h, ts, FL);
        if (!(f & F_WD)) { NAD(0) }
        else if (f & F_DECOUPLED) { NAD(F_WD | F_DECOUPLED) }
        else { NAD(F_WD) }
#undef NAD
        break;
    }
    }
#undef ARR
}

#undef TN
#endif /* OL_TYPED_PASS */
