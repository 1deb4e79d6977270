/* SWBN's training forward and backward over rows of channels, fused with the batch standardization.
 *
 * Zhang et al., "Stochastic Whitening Batch Normalization", CVPR 2021 (arXiv 2106.04413); the function and its
 * closed-form backward are derived in fewshot/norms/swbn_kernel.py, the Python side is fewshot/norms/swbn_rows.py.
 * Input rows are the m = N*H*W positions of a channels_last (or 2-D) tensor: row j holds its C channels
 * contiguously. The standardized xh is never stored: each pass recomputes it from x, the batch mean and invstd.
 * Per group of g channels:
 *
 *   sums:      sum x, then sum (x - mean)^2 per channel                                 (two passes over x)
 *   gram:      gram += xh xh^T,  xh = (x - mean) * invstd                              (one pass over x)
 *   apply:     y = A xh + bias                                                          (one pass over x)
 *   backward1: cross += gy xh^T;  gsum += gy                                           (one pass over gy, x)
 *   backward2: dx = P^T gy + s1 + (x - mean) * s2                                      (one pass over gy, x)
 *
 * A and P are (G, g, g); the caller passes them transposed where that makes the inner loop contiguous (at[b][c] =
 * A[c][b]; p[c][b]). Sums (gram, cross, gsum) are accumulated per chunk of rows in the input's precision, then in
 * double per fixed range of chunks and across ranges in order (run_chunks), so their rounding does not grow with m
 * and does not depend on the number of OpenMP threads. Float32 with g = 16 has a vectorized path (GCC vector
 * extensions); everything else a scalar one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define CHUNK 256

typedef float v16f __attribute__((vector_size(64)));
static inline v16f ld16(const float* p) { v16f v; memcpy(&v, p, sizeof v); return v; }
static inline void st16(float* p, v16f v) { memcpy(p, &v, sizeof v); }

/* ---------------------------------------------------------------- float32, g = 16 */
/* Rows are taken TILE at a time so that TILE independent accumulation chains hide the FMA latency; the lanes of
 * x̂ (or g_y) are read back from memory as broadcast operands instead of permuted out of a register. */
#define TILE 4
/* A compiler barrier: the lanes just stored must be read back from memory (as embedded broadcasts), not forwarded
 * from the register through lane permutes, which are the slower way on the CPUs measured. */
#define RELOAD() __asm__ volatile("" ::: "memory")

static void apply_chunk_f32_16(const float* x, float* y, int64_t r0, int64_t r1, int64_t C, const float* mean,
                               const float* invstd, const float* at, const float* bias) {
  float xs[TILE][16] __attribute__((aligned(64)));
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    v16f mu = ld16(mean + c0), r = ld16(invstd + c0), bi = ld16(bias + c0), a[16];
    for (int b = 0; b < 16; ++b) a[b] = ld16(at + c0 * 16 + b * 16);
    int64_t j = r0;
    for (; j + TILE <= r1; j += TILE) {
      v16f out[TILE];
      for (int t = 0; t < TILE; ++t) { st16(xs[t], (ld16(x + (j + t) * C + c0) - mu) * r); out[t] = bi; }
      RELOAD();
      for (int b = 0; b < 16; ++b)
        for (int t = 0; t < TILE; ++t) out[t] += xs[t][b] * a[b];
      for (int t = 0; t < TILE; ++t) st16(y + (j + t) * C + c0, out[t]);
    }
    for (; j < r1; ++j) {
      st16(xs[0], (ld16(x + j * C + c0) - mu) * r);
      RELOAD();
      v16f out = bi;
      for (int b = 0; b < 16; ++b) out += xs[0][b] * a[b];
      st16(y + j * C + c0, out);
    }
  }
}

static void gram_chunk_f32_16(const float* x, int64_t r0, int64_t r1, int64_t C, const float* mean, const float* invstd,
                              double* acc) {
  float xs[16] __attribute__((aligned(64)));
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    v16f mu = ld16(mean + c0), r = ld16(invstd + c0), gram[16];
    for (int b = 0; b < 16; ++b) gram[b] = (v16f){0};
    for (int64_t j = r0; j < r1; ++j) {
      v16f xh = (ld16(x + j * C + c0) - mu) * r;
      st16(xs, xh);
      RELOAD();
      for (int b = 0; b < 16; ++b) gram[b] += xs[b] * xh;
    }
    for (int b = 0; b < 16; ++b) for (int c = 0; c < 16; ++c) acc[c0 * 16 + b * 16 + c] += gram[b][c];
  }
}

static void cross_chunk_f32_16(const float* gy, const float* x, int64_t r0, int64_t r1, int64_t C, const float* mean,
                               const float* invstd, double* acc) {
  float gs[16] __attribute__((aligned(64)));
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    v16f mu = ld16(mean + c0), r = ld16(invstd + c0), sum = (v16f){0}, cross[16];
    for (int c = 0; c < 16; ++c) cross[c] = (v16f){0};
    for (int64_t j = r0; j < r1; ++j) {
      v16f xh = (ld16(x + j * C + c0) - mu) * r, g = ld16(gy + j * C + c0);
      st16(gs, g);
      RELOAD();
      sum += g;
      for (int c = 0; c < 16; ++c) cross[c] += gs[c] * xh;
    }
    for (int c = 0; c < 16; ++c) for (int b = 0; b < 16; ++b) acc[c0 * 16 + c * 16 + b] += cross[c][b];
    for (int c = 0; c < 16; ++c) acc[C * 16 + c0 + c] += sum[c];
  }
}

static void dx_chunk_f32_16(const float* gy, const float* x, float* dx, int64_t r0, int64_t r1, int64_t C, const float* mean,
                            const float* p, const float* s1, const float* s2) {
  float gs[TILE][16] __attribute__((aligned(64)));
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    v16f mu = ld16(mean + c0), t1 = ld16(s1 + c0), t2 = ld16(s2 + c0), pm[16];
    for (int c = 0; c < 16; ++c) pm[c] = ld16(p + c0 * 16 + c * 16);
    int64_t j = r0;
    for (; j + TILE <= r1; j += TILE) {
      v16f out[TILE];
      for (int t = 0; t < TILE; ++t) {
        memcpy(gs[t], gy + (j + t) * C + c0, sizeof gs[t]);
        out[t] = t1 + (ld16(x + (j + t) * C + c0) - mu) * t2;
      }
      RELOAD();
      for (int c = 0; c < 16; ++c)
        for (int t = 0; t < TILE; ++t) out[t] += gs[t][c] * pm[c];
      for (int t = 0; t < TILE; ++t) st16(dx + (j + t) * C + c0, out[t]);
    }
    for (; j < r1; ++j) {
      memcpy(gs[0], gy + j * C + c0, sizeof gs[0]);
      RELOAD();
      v16f out = t1 + (ld16(x + j * C + c0) - mu) * t2;
      for (int c = 0; c < 16; ++c) out += gs[0][c] * pm[c];
      st16(dx + j * C + c0, out);
    }
  }
}

/* ---------------------------------------------------------------- any precision, any g */
#define SCALAR_CHUNKS(T, SUF)                                                                                 \
  static void apply_chunk_##SUF(const T* x, T* y, int64_t r0, int64_t r1, int64_t C, int64_t g, const T* mean,           \
                                const T* invstd, const T* at, const T* bias, T* tmp) {                        \
    T* xh = tmp;                                                                                            \
    for (int64_t c0 = 0; c0 < C; c0 += g) {                                                                    \
      const T* a = at + c0 * g;                                                                             \
      for (int64_t j = r0; j < r1; ++j) {                                                                      \
        const T* xr = x + j * C + c0; T* yr = y + j * C + c0;                                               \
        for (int64_t b = 0; b < g; ++b) xh[b] = (xr[b] - mean[c0 + b]) * invstd[c0 + b];                      \
        for (int64_t c = 0; c < g; ++c) yr[c] = bias[c0 + c];                                                  \
        for (int64_t b = 0; b < g; ++b) for (int64_t c = 0; c < g; ++c) yr[c] += xh[b] * a[b * g + c];            \
      }                                                                                                     \
    }                                                                                                       \
  }                                                                                                         \
  static void gram_chunk_##SUF(const T* x, int64_t r0, int64_t r1, int64_t C, int64_t g, const T* mean, const T* invstd, \
                               double* acc, T* tmp) {                                                       \
    T* xh = tmp; T* gram = tmp + g;                                                                         \
    for (int64_t c0 = 0; c0 < C; c0 += g) {                                                                    \
      for (int64_t i = 0; i < g * g; ++i) gram[i] = 0;                                                         \
      for (int64_t j = r0; j < r1; ++j) {                                                                      \
        const T* xr = x + j * C + c0;                                                                       \
        for (int64_t b = 0; b < g; ++b) xh[b] = (xr[b] - mean[c0 + b]) * invstd[c0 + b];                      \
        for (int64_t b = 0; b < g; ++b) for (int64_t c = 0; c < g; ++c) gram[b * g + c] += xh[b] * xh[c];         \
      }                                                                                                     \
      for (int64_t i = 0; i < g * g; ++i) acc[c0 * g + i] += gram[i];                                          \
    }                                                                                                       \
  }                                                                                                         \
  static void cross_chunk_##SUF(const T* gy, const T* x, int64_t r0, int64_t r1, int64_t C, int64_t g, const T* mean,    \
                                const T* invstd, double* acc, T* tmp) {                                     \
    T* xh = tmp; T* cross = tmp + g; T* sum = tmp + g + g * g;                                              \
    for (int64_t c0 = 0; c0 < C; c0 += g) {                                                                    \
      for (int64_t i = 0; i < g * g; ++i) cross[i] = 0;                                                        \
      for (int64_t c = 0; c < g; ++c) sum[c] = 0;                                                              \
      for (int64_t j = r0; j < r1; ++j) {                                                                      \
        const T* xr = x + j * C + c0; const T* gr = gy + j * C + c0;                                        \
        for (int64_t b = 0; b < g; ++b) xh[b] = (xr[b] - mean[c0 + b]) * invstd[c0 + b];                      \
        for (int64_t c = 0; c < g; ++c) { sum[c] += gr[c]; for (int64_t b = 0; b < g; ++b) cross[c * g + b] += gr[c] * xh[b]; } \
      }                                                                                                     \
      for (int64_t i = 0; i < g * g; ++i) acc[c0 * g + i] += cross[i];                                         \
      for (int64_t c = 0; c < g; ++c) acc[C * g + c0 + c] += sum[c];                                           \
    }                                                                                                       \
  }                                                                                                         \
  static void dx_chunk_##SUF(const T* gy, const T* x, T* dx, int64_t r0, int64_t r1, int64_t C, int64_t g, const T* mean, \
                             const T* p, const T* s1, const T* s2) {                                        \
    for (int64_t c0 = 0; c0 < C; c0 += g) {                                                                    \
      const T* pm = p + c0 * g;                                                                             \
      for (int64_t j = r0; j < r1; ++j) {                                                                      \
        const T* xr = x + j * C + c0; const T* gr = gy + j * C + c0; T* out = dx + j * C + c0;              \
        for (int64_t b = 0; b < g; ++b) out[b] = s1[c0 + b] + (xr[b] - mean[c0 + b]) * s2[c0 + b];            \
        for (int64_t c = 0; c < g; ++c) for (int64_t b = 0; b < g; ++b) out[b] += gr[c] * pm[c * g + b];          \
      }                                                                                                     \
    }                                                                                                       \
  }

SCALAR_CHUNKS(float, f32)
SCALAR_CHUNKS(double, f64)

/* ---------------------------------------------------------------- per-channel sums (any precision, any C) */
#define CHANNEL_SUMS(T, SUF)                                                                                  \
  static void sum_chunk_##SUF(const T* x, int64_t r0, int64_t r1, int64_t C, const T* mean, double* acc, T* part) {   \
    for (int64_t c = 0; c < C; ++c) part[c] = 0;                                                                 \
    if (mean) {                                                                                               \
      for (int64_t j = r0; j < r1; ++j)                                                                          \
        for (int64_t c = 0; c < C; ++c) { T d = x[j * C + c] - mean[c]; part[c] += d * d; }                      \
    } else {                                                                                                  \
      for (int64_t j = r0; j < r1; ++j)                                                                          \
        for (int64_t c = 0; c < C; ++c) part[c] += x[j * C + c];                                                 \
    }                                                                                                         \
    for (int64_t c = 0; c < C; ++c) acc[c] += part[c];                                                           \
  }

CHANNEL_SUMS(float, f32)
CHANNEL_SUMS(double, f64)

/* ---------------------------------------------------------------- drivers */
typedef struct {
  const void *x, *gy, *mean, *invstd, *mat, *bias, *s1, *s2;
  void *out;
  int64_t m, C, g;
  int fast; /* float32 with g = 16: the vectorized chunk functions */
} args_t;

typedef void (*chunk_fn)(const args_t* a, int64_t r0, int64_t r1, double* acc, void* tmp);

/* Rows [0, m) in chunks of CHUNK, the chunks in at most SLOTS fixed consecutive ranges ("slots"). Each slot sums its
 * chunks in order into its own double buffer of `nacc` values, and the slots are added in order into out_acc.
 * Threads take whole slots, so the sums are the same bits whatever the number of threads (a process on one
 * thread and one on two, or a distributed rank, give identical results). Returns 0, or 1 when memory ran out. */
#define SLOTS 64

static int run_chunks(const args_t* a, int threads, int64_t nacc, size_t tmp_bytes, chunk_fn fn, double* out_acc) {
  int64_t nchunks = (a->m + CHUNK - 1) / CHUNK;
  int64_t nslots = nchunks < SLOTS ? nchunks : SLOTS;
  if (threads < 1) threads = 1;
  double* bufs = nacc ? (double*)calloc((size_t)nacc * (nslots > 0 ? nslots : 1), sizeof(double)) : NULL;
  if (nacc && !bufs) return 1;
  int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : failed)
  for (int64_t s = 0; s < nslots; ++s) {
    void* tmp = malloc(tmp_bytes ? tmp_bytes : 1);
    if (!tmp) {
      failed = 1;
      continue;
    }
    double* acc = nacc ? bufs + (size_t)nacc * s : NULL;
    for (int64_t k = nchunks * s / nslots; k < nchunks * (s + 1) / nslots; ++k) {
      int64_t r0 = k * CHUNK, r1 = r0 + CHUNK < a->m ? r0 + CHUNK : a->m;
      fn(a, r0, r1, acc, tmp);
    }
    free(tmp);
  }
  for (int64_t i = 0; i < nacc; ++i) out_acc[i] = 0;
  for (int64_t s = 0; s < nslots; ++s)
    for (int64_t i = 0; i < nacc; ++i) out_acc[i] += bufs[(size_t)nacc * s + i];
  free(bufs);
  return failed;
}

#define CHUNK_FNS(T, SUF)                                                                                     \
  static void sums_##SUF(const args_t* a, int64_t r0, int64_t r1, double* acc, void* tmp) {                         \
    sum_chunk_##SUF((const T*)a->x, r0, r1, a->C, (const T*)a->mean, acc, (T*)tmp);                          \
  }                                                                                                           \
  static void apply_##SUF(const args_t* a, int64_t r0, int64_t r1, double* acc, void* tmp) {                        \
    (void)acc;                                                                                                \
    if (a->fast) apply_chunk_f32_16((const float*)a->x, (float*)a->out, r0, r1, a->C, (const float*)a->mean,  \
                                    (const float*)a->invstd, (const float*)a->mat, (const float*)a->bias);    \
    else apply_chunk_##SUF((const T*)a->x, (T*)a->out, r0, r1, a->C, a->g, (const T*)a->mean,                \
                           (const T*)a->invstd, (const T*)a->mat, (const T*)a->bias, (T*)tmp);                \
  }                                                                                                           \
  static void gram_##SUF(const args_t* a, int64_t r0, int64_t r1, double* acc, void* tmp) {                         \
    if (a->fast) gram_chunk_f32_16((const float*)a->x, r0, r1, a->C, (const float*)a->mean,                   \
                                   (const float*)a->invstd, acc);                                             \
    else gram_chunk_##SUF((const T*)a->x, r0, r1, a->C, a->g, (const T*)a->mean, (const T*)a->invstd, acc,   \
                          (T*)tmp);                                                                           \
  }                                                                                                           \
  static void cross_##SUF(const args_t* a, int64_t r0, int64_t r1, double* acc, void* tmp) {                        \
    if (a->fast) cross_chunk_f32_16((const float*)a->gy, (const float*)a->x, r0, r1, a->C,                    \
                                    (const float*)a->mean, (const float*)a->invstd, acc);                     \
    else cross_chunk_##SUF((const T*)a->gy, (const T*)a->x, r0, r1, a->C, a->g, (const T*)a->mean,           \
                           (const T*)a->invstd, acc, (T*)tmp);                                                \
  }                                                                                                           \
  static void dx_##SUF(const args_t* a, int64_t r0, int64_t r1, double* acc, void* tmp) {                           \
    (void)acc; (void)tmp;                                                                                     \
    if (a->fast) dx_chunk_f32_16((const float*)a->gy, (const float*)a->x, (float*)a->out, r0, r1, a->C,       \
                                 (const float*)a->mean, (const float*)a->mat, (const float*)a->s1,            \
                                 (const float*)a->s2);                                                        \
    else dx_chunk_##SUF((const T*)a->gy, (const T*)a->x, (T*)a->out, r0, r1, a->C, a->g, (const T*)a->mean,  \
                        (const T*)a->mat, (const T*)a->s1, (const T*)a->s2);                                  \
  }

CHUNK_FNS(float, f32)
CHUNK_FNS(double, f64)

/* ---------------------------------------------------------------- entry points (ctypes)
 * dtype: 0 float32, 1 float64. All arrays dense and of that dtype (the sums: double); x, gy, y, dx are (m, C)
 * rows; mean, invstd, bias, s1, s2 (C); at, p (C / g, g, g). The caller (fewshot/norms/swbn_rows.py) checks all
 * of that. Each returns 0, 1 when memory ran out, or 2 for a shape it cannot take (g < 1, C not a multiple of g). */
#define BAD_SHAPE(m, C, g) ((m) < 0 || (g) < 1 || (C) < (g) || (C) % (g) != 0)
static chunk_fn pick(int dtype, chunk_fn f32, chunk_fn f64) { return dtype ? f64 : f32; }

/* out (C) = sum over rows of x, or of (x - mean)^2 when mean is not NULL. */
int swbn_rows_channel_sums(int dtype, const void* x, int64_t m, int64_t C, const void* mean, double* out, int threads) {
  if (m < 0 || C < 1) return 2;
  args_t a = {x, NULL, mean, NULL, NULL, NULL, NULL, NULL, NULL, m, C, 1, 0};
  size_t esize = dtype ? sizeof(double) : sizeof(float);
  return run_chunks(&a, threads, C, esize * (size_t)C, pick(dtype, sums_f32, sums_f64), out);
}

/* y = A (x - mean) * invstd + bias per group. */
int swbn_rows_apply(int dtype, const void* x, void* y, int64_t m, int64_t C, int64_t g, const void* mean, const void* invstd,
                    const void* at, const void* bias, int threads) {
  if (BAD_SHAPE(m, C, g)) return 2;
  args_t a = {x, NULL, mean, invstd, at, bias, NULL, NULL, y, m, C, g, dtype == 0 && g == 16};
  size_t esize = dtype ? sizeof(double) : sizeof(float);
  return run_chunks(&a, threads, 0, esize * (size_t)g, pick(dtype, apply_f32, apply_f64), NULL);
}

/* gram (C / g, g, g) = sum over rows of xh xh^T, xh = (x - mean) * invstd. */
int swbn_rows_gram(int dtype, const void* x, int64_t m, int64_t C, int64_t g, const void* mean, const void* invstd,
                   double* gram, int threads) {
  if (BAD_SHAPE(m, C, g)) return 2;
  args_t a = {x, NULL, mean, invstd, NULL, NULL, NULL, NULL, NULL, m, C, g, dtype == 0 && g == 16};
  size_t esize = dtype ? sizeof(double) : sizeof(float);
  return run_chunks(&a, threads, C * g, esize * (size_t)(g + g * g), pick(dtype, gram_f32, gram_f64), gram);
}

/* out (C * g + C): cross (C / g, g, g) = sum over rows of gy xh^T, then gsum (C) = sum over rows of gy. */
int swbn_rows_cross(int dtype, const void* gy, const void* x, int64_t m, int64_t C, int64_t g, const void* mean,
                    const void* invstd, double* out, int threads) {
  if (BAD_SHAPE(m, C, g)) return 2;
  args_t a = {x, gy, mean, invstd, NULL, NULL, NULL, NULL, NULL, m, C, g, dtype == 0 && g == 16};
  size_t esize = dtype ? sizeof(double) : sizeof(float);
  return run_chunks(&a, threads, C * g + C, esize * (size_t)(2 * g + g * g), pick(dtype, cross_f32, cross_f64),
                    out);
}

/* dx[b] = sum_c gy[c] p[c][b] + s1[b] + (x[b] - mean[b]) s2[b] per group. */
int swbn_rows_dx(int dtype, const void* gy, const void* x, void* dx, int64_t m, int64_t C, int64_t g, const void* mean,
                 const void* p, const void* s1, const void* s2, int threads) {
  if (BAD_SHAPE(m, C, g)) return 2;
  args_t a = {x, gy, mean, NULL, p, NULL, s1, s2, dx, m, C, g, dtype == 0 && g == 16};
  return run_chunks(&a, threads, 0, 0, pick(dtype, dx_f32, dx_f64), NULL);
}
