/* Philox4x32-10 known answers (Random123's kat_vectors) and the draw layout. */
#include "gc_test.h"

START_TEST(test_philox_known_answers)
{
    static const uint32_t kat[3][10] = {
        /* ctr[4], key[2], expected[4] */
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
         0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
         0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        gc_philox4x32_10(&kat[i][4], &kat[i][0], out);
        for (int j = 0; j < 4; j++) ck_assert_uint_eq(out[j], kat[i][6 + j]);
    }
}
END_TEST

START_TEST(test_uniform_layout)
{
    /* element e of a sample uses word e%4 of counter (e/4, sample, op, step) */
    uint64_t seed = 0x123456789abcdefULL;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {5, 7, 11, 13}, r[4];
    gc_philox4x32_10(key, ctr, r);
    for (int w = 0; w < 4; w++) {
        float u = gc_rand_uniform(seed, 13, 11, 7, 20 + (uint64_t)w);
        ck_assert_float_eq(u, (float)(r[w] >> 8) / 16777216.0f);
        ck_assert(u >= 0.0f && u < 1.0f);
    }
    /* rough uniformity: mean of 100k draws near 1/2 */
    double s = 0;
    for (int i = 0; i < 100000; i++) s += gc_rand_uniform(1, 0, 0, 0, (uint64_t)i);
    ck_assert_double_eq_tol(s / 100000, 0.5, 0.01);
}
END_TEST

START_TEST(test_rand_context_roundtrip)
{
    gc_rand_context a = {42, 3, 128};
    gc_rand_context_set(a);
    gc_rand_context b = gc_rand_context_get();
    ck_assert_uint_eq(b.seed, 42);
    ck_assert_uint_eq(b.step, 3);
    ck_assert_int_eq(b.sample_offset, 128);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = gc_test_tcase("philox");
    tcase_add_test(tc, test_philox_known_answers);
    tcase_add_test(tc, test_uniform_layout);
    tcase_add_test(tc, test_rand_context_roundtrip);
    suite_add_tcase(s, tc);
    return gc_test_run(s);
}
