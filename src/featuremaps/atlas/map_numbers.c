/* The atlas's per-map numbers on the CPU, in one read of each map from memory.
 *
 * For each of `maps` contiguous float32 maps of `n` values: the maximum, the mean, the population variance,
 * the count of values > 0 and, where the map may enter its channel's top-k, the position of the first
 * maximum (torch.argmax's answer, NaN included).
 *
 * One pass over each map, from memory (the maps ahead are fetched early), gives the maximum, the count of
 * positives and the sums of d = x - k and d^2 about a shift k (the mean of 8 values spread over the map):
 * the mean is k + mean(d) and the variance mean(d^2) - mean(d)^2, which loses at most one bit to
 * cancellation while mean(d)^2 <= variance. Where the shift was farther from the mean than that (rare), a
 * second pass, from cache, sums the deviations about the float32 mean and gives both moments again. The
 * position of the maximum is searched for, from cache, only in the maps whose score reaches their channel's
 * threshold (the k-th best score so far): the others cannot enter the top-k.
 *
 * Sums run in float32 lanes over a few values each, then in float64. Maps holding NaN or infinities take
 * plain scalar loops in float64. Each map is reduced by one thread in a fixed order: its numbers depend
 * only on its values, whatever the batch or threads.
 *
 * featuremaps compiles this file on first use (featuremaps/atlas/native.py);
 * on x86-64 with AVX2, FMA and BMI it uses those instructions, elsewhere portable C.
 */
#include <math.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define FM_ABI 7
#define BLOCK 128  /* values summed in float32 lanes (4 a lane) before they are added in float64 */
#define BLOCK2 256 /* the same in the second pass (8 a lane) */
#define MAX_THREADS 64
#define PREFETCH 2048 /* values ahead that the pass asks the CPU to fetch (maps come one after another) */
#define MIN_PARALLEL (1 << 18) /* values below which one thread does all the maps */

int fm_abi(void) { return FM_ABI; }

typedef struct {
    float max;
    int64_t arg;
    float mean;
    float var;
    int64_t pos;
} numbers_t;

/* Maps with NaN or infinities (or sums beyond float32), and every map without AVX2: scalar loops, float64
 * sums. */
static numbers_t scalar_numbers(const float *x, int64_t n) {
    numbers_t r;
    float m = x[0];
    int64_t arg = 0, p = 0;
    double s = 0.0;
    for (int64_t j = 0; j < n; j++) {
        float v = x[j];
        if (m == m && (v != v || v > m)) { /* the first NaN wins for good, as in torch.argmax */
            m = v;
            arg = j;
        }
        p += v > 0.0f;
        s += (double)v;
    }
    double mean = s / (double)n, q = 0.0;
    for (int64_t j = 0; j < n; j++) {
        double d = (double)x[j] - mean;
        q += d * d;
    }
    r.max = m;
    r.arg = arg;
    r.mean = (float)mean;
    r.var = (float)(q / (double)n);
    r.pos = p;
    return r;
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__BMI__)
#include <immintrin.h>

static inline double hsum_pd(__m256d a) {
    __m128d lo = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(lo) + _mm_cvtsd_f64(_mm_unpackhi_pd(lo, lo));
}

static inline __m256d widen_add(__m256d acc, __m256 f) {
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
    return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
}

/* The second pass, where the first one's shift was far from the mean: the sums of d = x - mf and d^2 about
 * the float32 mean mf, from cache. */
static void deviations(const float *x, int64_t n, float mf, double *q_out, double *d_out) {
    const __m256 zero = _mm256_setzero_ps(), mv = _mm256_set1_ps(mf);
    const int64_t full = n - n % 8;
    __m256d qd = _mm256_setzero_pd(), dd = _mm256_setzero_pd();
    int64_t j = 0;
#define FM_PASS3(q, d, at)                                                                        \
    do {                                                                                          \
        __m256 v_ = _mm256_sub_ps(_mm256_loadu_ps(x + (at)), mv);                                 \
        q = _mm256_fmadd_ps(v_, v_, q);                                                           \
        d = _mm256_add_ps(d, v_);                                                                 \
    } while (0)
    while (j < full) {
        const int64_t end = j + BLOCK2 < full ? j + BLOCK2 : full;
        __m256 q0 = zero, q1 = zero, q2 = zero, q3 = zero, d0 = zero, d1 = zero, d2 = zero, d3 = zero;
        for (; j + 32 <= end; j += 32) {
            FM_PASS3(q0, d0, j);
            FM_PASS3(q1, d1, j + 8);
            FM_PASS3(q2, d2, j + 16);
            FM_PASS3(q3, d3, j + 24);
        }
        for (; j < end; j += 8) FM_PASS3(q0, d0, j);
        qd = widen_add(qd, _mm256_add_ps(_mm256_add_ps(q0, q1), _mm256_add_ps(q2, q3)));
        dd = widen_add(dd, _mm256_add_ps(_mm256_add_ps(d0, d1), _mm256_add_ps(d2, d3)));
    }
#undef FM_PASS3
    double q = hsum_pd(qd), dm = hsum_pd(dd);
    for (; j < n; j++) {
        double d = (double)(x[j] - mf);
        q += d * d;
        dm += d;
    }
    *q_out = q;
    *d_out = dm;
}

/* The first position of m (a value of the map), from cache: a step of 32 values at a time. */
static int64_t first_of(const float *x, int64_t n, float m) {
    const __m256 mm = _mm256_set1_ps(m);
    const int64_t full = n - n % 8;
    int64_t j = 0;
#define FM_HITS(at) ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + (at)), mm, _CMP_EQ_OQ)))
    for (; j + 32 <= full; j += 32) {
        unsigned hits = FM_HITS(j) | FM_HITS(j + 8) << 8 | FM_HITS(j + 16) << 16 | FM_HITS(j + 24) << 24;
        if (hits) return j + (int64_t)_tzcnt_u32(hits);
    }
    for (; j < full; j += 8) {
        unsigned hits = FM_HITS(j);
        if (hits) return j + (int64_t)_tzcnt_u32(hits);
    }
#undef FM_HITS
    for (; j < n; j++) if (x[j] == m) return j;
    return 0;
}

/* Four independent accumulators of 8 lanes each: a chain of dependent additions or maxima would wait on
 * each instruction's latency; four keep the CPU's vector units busy. */
static numbers_t map_numbers(const float *x, int64_t n, double threshold, int by_mean) {
    const __m256 zero = _mm256_setzero_ps();
    float k = 0.0f; /* the shift: the mean of 8 values spread over the map */
    for (int i = 0; i < 8; i++) k += x[(2 * i + 1) * n / 16];
    k *= 0.125f;
    const __m256 kv = _mm256_set1_ps(k);
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    __m256i p0 = _mm256_setzero_si256(), p1 = p0, p2 = p0, p3 = p0;
    __m256d sd = _mm256_setzero_pd(), qd = _mm256_setzero_pd();
    const int64_t full = n - n % 8;
    int64_t j = 0;
#define FM_ONE(m, p, s, q, at)                                                                    \
    do {                                                                                          \
        __m256 v_ = _mm256_loadu_ps(x + (at));                                                    \
        m = _mm256_max_ps(v_, m);                                                                 \
        __m256 d_ = _mm256_sub_ps(v_, kv);                                                        \
        s = _mm256_add_ps(s, d_);                                                                 \
        q = _mm256_fmadd_ps(d_, d_, q);                                                           \
        p = _mm256_sub_epi32(p, _mm256_castps_si256(_mm256_cmp_ps(v_, zero, _CMP_GT_OQ)));       \
    } while (0)
    while (j < full) {
        const int64_t end = j + BLOCK < full ? j + BLOCK : full;
        __m256 s0 = zero, s1 = zero, s2 = zero, s3 = zero, q0 = zero, q1 = zero, q2 = zero, q3 = zero;
        for (; j + 32 <= end; j += 32) {
            _mm_prefetch((const char *)(x + j + PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(x + j + PREFETCH + 16), _MM_HINT_T0);
            FM_ONE(m0, p0, s0, q0, j);
            FM_ONE(m1, p1, s1, q1, j + 8);
            FM_ONE(m2, p2, s2, q2, j + 16);
            FM_ONE(m3, p3, s3, q3, j + 24);
        }
        for (; j < end; j += 8) FM_ONE(m0, p0, s0, q0, j);
        sd = widen_add(sd, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
        qd = widen_add(qd, _mm256_add_ps(_mm256_add_ps(q0, q1), _mm256_add_ps(q2, q3)));
    }
#undef FM_ONE
    float lanes[8];
    int32_t counts[8];
    _mm256_storeu_ps(lanes, _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    _mm256_storeu_si256((__m256i *)counts, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
    float m = -INFINITY;
    int64_t p = 0;
    for (int l = 0; l < 8; l++) {
        m = lanes[l] > m ? lanes[l] : m;
        p += counts[l];
    }
    double s = hsum_pd(sd), q = hsum_pd(qd);
    for (; j < n; j++) {
        float v = x[j];
        m = v > m ? v : m;
        double d = (double)(v - k);
        s += d;
        q += d * d;
        p += v > 0.0f;
    }
    if (!isfinite(s) || !isfinite(q) || !isfinite(m)) return scalar_numbers(x, n);
    double dm = s / (double)n;
    double mean = (double)k + dm;
    double var = q / (double)n - dm * dm;
    if (dm * dm > var) { /* the shift was far from the mean (rare): the deviations again, about the mean */
        float mf = (float)mean;
        double q2, d2;
        deviations(x, n, mf, &q2, &d2);
        d2 /= (double)n;
        var = q2 / (double)n - d2 * d2;
        mean = (double)mf + d2; /* (the first sums lost digits to d's size: these are about the mean) */
    }
    const float mean32 = (float)mean;
    const int locate = (by_mean ? (double)mean32 : (double)m) >= threshold;
    numbers_t r = {m, locate ? first_of(x, n, m) : -1, mean32, (float)(var > 0.0 ? var : 0.0), p};
    return r;
}

#else /* portable C: the scalar loops (float64 sums), for every map */

static numbers_t map_numbers(const float *x, int64_t n, double threshold, int by_mean) {
    (void)threshold, (void)by_mean; /* (every position: the scalar loops find it on the way) */
    return scalar_numbers(x, n);
}
#endif

typedef struct {
    const float *x;
    int64_t lo, hi, n, channels;
    const double *threshold;
    int by_mean;
    float *max, *mean, *var;
    int64_t *arg, *pos;
} job_t;

static void run(const job_t *job) {
    for (int64_t i = job->lo; i < job->hi; i++) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__BMI__)
        if (job->n < 512) /* maps too short for the pass's own prefetching: the maps PREFETCH values ahead */
            for (int64_t k = 0; k < job->n; k += 16)
                _mm_prefetch((const char *)(job->x + i * job->n + PREFETCH + k), _MM_HINT_T0);
#endif
        const double threshold = job->threshold ? job->threshold[i % job->channels] : -INFINITY;
        numbers_t r = map_numbers(job->x + i * job->n, job->n, threshold, job->by_mean);
        job->max[i] = r.max;
        job->arg[i] = r.arg;
        job->mean[i] = r.mean;
        job->var[i] = r.var;
        job->pos[i] = r.pos;
    }
}

/* Threads: the kernel's parallel region runs on the OpenMP runtime that PyTorch has loaded (featuremaps links
 * this file against that very library), so it uses PyTorch's own threads, which are awake and spread over the
 * cores during a forward. (Threads of its own, woken from inside a forward hook, were often placed on the
 * calling thread's core, and then ran after it rather than beside it.) Built without OpenMP, one thread does
 * all the maps. A child process made by fork() after this library was loaded also uses one thread: the
 * OpenMP runtime cannot start a team there (its parent's threads are gone, and it would wait for them). */
#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);
#include <unistd.h>
static pid_t loaded_in = 0; /* the process that loaded this library */
__attribute__((constructor)) static void remember_process(void) { loaded_in = getpid(); }
#endif

/* The threads a call on `values` values may use, of the `threads` asked for (PyTorch's count): one below
 * MIN_PARALLEL values, without OpenMP and in a forked child; at most MAX_THREADS. */
static int team_size(int threads, int64_t values) {
    if (threads < 1 || values < MIN_PARALLEL) return 1;
#ifdef _OPENMP
    if (getpid() != loaded_in) return 1; /* a forked child */
    return threads > MAX_THREADS ? MAX_THREADS : threads;
#else
    return 1;
#endif
}

/* The numbers of `maps` maps of `n` values (n >= 1) at `x`, on up to `threads` threads. Map i is of channel
 * i % channels; its position is found where its score (the maximum, or with by_mean the mean) is at least
 * threshold[channel] (every map's without a threshold), else it is -1. */
int fm_map_numbers(const float *x, int64_t maps, int64_t n, int64_t channels, const double *threshold, int by_mean,
                   float *max, int64_t *arg, float *mean, float *var, int64_t *pos, int threads) {
    if (n < 1 || maps < 0 || channels < 1) return 1;
    threads = team_size(threads, maps * n);
    if (threads > maps) threads = maps > 0 ? (int)maps : 1;
    if (threads == 1) {
        job_t job = {x, 0, maps, n, channels, threshold, by_mean, max, mean, var, arg, pos};
        run(&job);
        return 0;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), used = omp_get_num_threads();
        job_t job = {x, maps * t / used, maps * (t + 1) / used, n, channels, threshold, by_mean, max, mean, var, arg,
                     pos};
        run(&job);
    }
#endif
    return 0;
}

/* Merge one batch into the top-k of several layers, in place.
 *
 * Layer l has channels[l] channels. Its top-k is score[l], index[l], y[l] and x[l], each (channels, k) and
 * row-major, best first under the atlas's order: a higher score first, an equal score with the lower dataset
 * index first (an empty slot has score -inf and index 2**62). The batch gives new_score[l] (batch, channels;
 * NaN ranks as -inf) and new_flat[l], the flat position of each map's maximum (-1 where it was not looked
 * for), whose rows (width[l] values each; 0 for 1-D maps and vectors: y = 0, x = flat) give y and x. Row r of
 * the batch is dataset index batch_index[r]. An entry enters by insertion, so the result is the top-k of the
 * old entries and the batch's under that order, as one sort of both would give. Returns 0, or 2 when an
 * entry that enters has no position (the top-k is then partly merged). Called from Python (ctypes), it runs
 * whole: an interrupt can only come before or after it. */
int fm_topk_merge(int64_t layers, const int64_t *channels, int64_t k, int64_t batch, const int64_t *batch_index,
                  double *const *score, int64_t *const *index, int64_t *const *y, int64_t *const *x,
                  const float *const *new_score, const int64_t *const *new_flat, const int64_t *width) {
    if (layers < 0 || k < 1 || batch < 0) return 1;
    for (int64_t l = 0; l < layers; l++) {
        const int64_t c_all = channels[l], w = width[l];
        for (int64_t r = 0; r < batch; r++) {
            const int64_t id = batch_index[r];
            const float *row = new_score[l] + r * c_all;
            const int64_t *flat = new_flat[l] + r * c_all;
            for (int64_t c = 0; c < c_all; c++) {
                const float v = row[c];
                const double d = v != v ? -INFINITY : (double)v;
                double *s = score[l] + c * k;
                int64_t *ix = index[l] + c * k;
                if (!(d > s[k - 1] || (d == s[k - 1] && id < ix[k - 1]))) continue; /* the usual case */
                const int64_t at = flat[c];
                if (at < 0) return 2;
                int64_t *ys = y[l] + c * k, *xs = x[l] + c * k;
                int64_t j = k - 1;
                for (; j > 0 && (d > s[j - 1] || (d == s[j - 1] && id < ix[j - 1])); j--) {
                    s[j] = s[j - 1];
                    ix[j] = ix[j - 1];
                    ys[j] = ys[j - 1];
                    xs[j] = xs[j - 1];
                }
                s[j] = d;
                ix[j] = id;
                ys[j] = w > 0 ? at / w : 0;
                xs[j] = w > 0 ? at % w : at;
            }
        }
    }
    return 0;
}

#define FM_LIMBS 12

/* Whether a float64 value (its bits) is beyond the fixed-point sums' range: not finite, or 2**244 or more in
 * magnitude (the top limbs must stay free for the sums). */
static inline int beyond_range(uint64_t b) {
    const int64_t e = (int64_t)((b >> 52) & 0x7ff);
    const int64_t pos = (e ? e : 1) - 1075 + 96; /* the significand's lowest bit, above 2**-96 */
    return e == 0x7ff || (pos > 0 ? pos : 0) >> 5 > FM_LIMBS - 4;
}

/* Add floor(value * 2**96) to the limbs `sum` (one column's), split as exact.py's per-value path splits it: the
 * value's 53-bit significand placed at its exponent, its low and high 32 bits over three limbs, each adding less
 * than 2**33 to a limb. The value must be within range (beyond_range). */
static inline void place(int64_t *sum, double value) {
    uint64_t b;
    memcpy(&b, &value, sizeof b);
    const int64_t e = (int64_t)((b >> 52) & 0x7ff);
    int64_t mag = (int64_t)(b & ((UINT64_C(1) << 52) - 1)) | (e ? INT64_C(1) << 52 : 0);
    int64_t pos = (e ? e : 1) - 1075 + 96;
    if (b >> 63) mag = -mag;
    if (pos < 0) { /* bits below 2**-96: floored (an arithmetic shift), the same wherever added */
        mag >>= (-pos > 63 ? 63 : -pos);
        pos = 0;
    }
    const int64_t off = pos & 31, limb = pos >> 5;
    const int64_t lo = (mag & 0xffffffff) << off;       /* < 2**63 */
    const int64_t hi = (mag >> 32) * (INT64_C(1) << off); /* |hi| < 2**52, signed */
    sum[limb] += lo & 0xffffffff;
    sum[limb + 1] += (lo >> 32) + (hi & 0xffffffff);
    sum[limb + 2] += hi >> 32;
}

/* Add floor(v * 2**96) of every value of v (rows x cols, row-major, float64) to the fixed-point sums `out`
 * (LIMBS x cols int64 limbs, row-major; limb i weighs 2**(32 i - 96); see featuremaps/atlas/exact.py), without
 * carrying (place). Returns 0, or 2, having added nothing, when a value is beyond the range (beyond_range).
 * Columns are summed in blocks first (fewer than 2**24 rows: no overflow), the blocks shared among up to
 * `threads` threads (each column's sums do not depend on them). */
int fm_exact_add(const double *v, int64_t rows, int64_t cols, int64_t *out, int threads) {
    if (rows < 0 || cols < 0) return 1;
    const int64_t total = rows * cols;
    threads = team_size(threads, total);
    int bad = 0;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1) reduction(| : bad)
    for (int64_t i = 0; i < total; i++) { /* first every value's range: all or nothing is added */
        uint64_t b;
        memcpy(&b, v + i, sizeof b);
        bad |= beyond_range(b);
    }
    if (bad) return 2;
    enum { COLUMNS = 256 }; /* columns summed at a time: their sums stay in the cache, rows are read in order */
    const int64_t blocks = (cols + COLUMNS - 1) / COLUMNS;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t c0 = block * COLUMNS;
        int64_t sums[COLUMNS][FM_LIMBS];
        const int64_t width = cols - c0 < COLUMNS ? cols - c0 : COLUMNS;
        memset(sums, 0, sizeof sums);
        for (int64_t r = 0; r < rows; r++) {
            const double *row = v + r * cols + c0;
            for (int64_t c = 0; c < width; c++) place(sums[c], row[c]);
        }
        for (int l = 0; l < FM_LIMBS; l++)
            for (int64_t c = 0; c < width; c++) out[l * cols + c0 + c] += sums[c][l];
    }
    return 0;
}

/* The atlas's moment sums (featuremaps/atlas/stats.py), from each map's float32 mean m and variance v (rows x
 * cols, row-major): add m to column c, v to column cols + c and m*m (exact in float64) to column 2 cols + c of
 * `out` (LIMBS x 3 cols limbs), as fm_exact_add adds those three float64 columns. Returns 0, or 2, having added
 * nothing, when a mean is not finite or |m| >= max_mean, or a variance is not finite (such maps are left out of
 * the statistics, which the caller does its own way). */
int fm_moments_add(const float *m, const float *v, int64_t rows, int64_t cols, double max_mean, int64_t *out,
                   int threads) {
    if (rows < 0 || cols < 0 || !(max_mean <= 0x1p100)) return 1; /* (m*m then stays within range) */
    const int64_t total = rows * cols;
    threads = team_size(threads, 3 * total);
    int bad = 0;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1) reduction(| : bad)
    for (int64_t i = 0; i < total; i++) bad |= !(fabs((double)m[i]) < max_mean) | !isfinite(v[i]);
    if (bad) return 2;
    enum { COLUMNS = 128 }; /* three sums of this many columns stay in the cache */
    const int64_t blocks = (cols + COLUMNS - 1) / COLUMNS, stride = 3 * cols;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t c0 = block * COLUMNS;
        int64_t sums[3][COLUMNS][FM_LIMBS];
        const int64_t width = cols - c0 < COLUMNS ? cols - c0 : COLUMNS;
        memset(sums, 0, sizeof sums);
        for (int64_t r = 0; r < rows; r++) {
            const float *mr = m + r * cols + c0, *vr = v + r * cols + c0;
            for (int64_t c = 0; c < width; c++) {
                const double mean = (double)mr[c];
                place(sums[0][c], mean);
                place(sums[1][c], (double)vr[c]);
                place(sums[2][c], mean * mean);
            }
        }
        for (int part = 0; part < 3; part++)
            for (int l = 0; l < FM_LIMBS; l++)
                for (int64_t c = 0; c < width; c++) out[l * stride + part * cols + c0 + c] += sums[part][c][l];
    }
    return 0;
}

/* Normalize fixed-point sums in place (featuremaps/atlas/exact.py's _carry): `limbs` (n_limbs x cols, row-major)
 * become each in [0, 2**32) but the last, which keeps the sign, holding the same numbers. One pass from the lowest
 * limb up, so a carry that ripples is taken along at once. Returns 0. */
int fm_carry(int64_t *limbs, int64_t n_limbs, int64_t cols) {
    if (n_limbs < 1 || cols < 0) return 1;
    for (int64_t l = 0; l + 1 < n_limbs; l++) {
        int64_t *low = limbs + l * cols, *high = low + cols;
        for (int64_t c = 0; c < cols; c++) {
            const int64_t v = low[c];
            high[c] += v >> 32; /* floor(v / 2**32): an arithmetic shift (GCC and Clang) */
            low[c] = v & 0xffffffff;
        }
    }
    return 0;
}
