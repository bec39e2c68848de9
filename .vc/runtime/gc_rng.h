/* Random numbers: Philox4x32-10 (Salmon et al. 2011), counter-based: every number is a
 * pure function of (key, counter), so the CPU and the GPU produce identical streams and
 * any element can be drawn without drawing the ones before it.
 *
 * Random ops (dropout) key their draws by (seed; step, op, sample, element), where
 * `sample` is the row's index in the WHOLE batch: a chunk starting at row s sets
 * sample_offset = s. The numbers a sample sees therefore do not depend on how the batch
 * was chunked, and a replayed forward (gradient cache, checkpointing) sees the same ones. */
#ifndef GC_RNG_H
#define GC_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define GC_HD __host__ __device__
#else
#define GC_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define GC_PHILOX_M0 0xD2511F53u
#define GC_PHILOX_M1 0xCD9E8D57u
#define GC_PHILOX_W0 0x9E3779B9u
#define GC_PHILOX_W1 0xBB67AE85u

static inline GC_HD void gc_philox4x32_10(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)GC_PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)GC_PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += GC_PHILOX_W0;
        k1 += GC_PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* The uniform in [0,1) for element `elem` of sample `sample` drawn by op `op` at `step`:
 * key = seed, counter = (elem/4, sample, op, step), word elem%4, top 24 bits. */
static inline GC_HD float gc_rand_uniform(uint64_t seed, uint32_t step, uint32_t op, uint32_t sample, uint64_t elem)
{
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)(elem >> 2), sample, op, step};
    uint32_t r[4];
    gc_philox4x32_10(key, ctr, r);
    /* constant indices: a dynamic r[elem & 3] would put r in a GPU kernel's local memory */
    const uint32_t w = (elem & 3) == 0 ? r[0] : (elem & 3) == 1 ? r[1] : (elem & 3) == 2 ? r[2] : r[3];
    return (float)(w >> 8) * (1.0f / 16777216.0f);
}

/* RandContext: the random state a forward pass draws from. Capturing it before a
 * chunk's first forward and restoring it before the replay gives identical numbers. */
typedef struct gc_rand_context {
    uint64_t seed;
    uint32_t step;          /* training step: fresh masks every step */
    int64_t sample_offset;  /* index in the whole batch of this chunk's row 0 */
} gc_rand_context;

gc_rand_context gc_rand_context_get(void);      /* the calling thread's current state */
void gc_rand_context_set(gc_rand_context ctx);  /* restore a captured state */

#ifdef __cplusplus
}
#endif

#endif
