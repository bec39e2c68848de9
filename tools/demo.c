/* gc_demo: trains a tiny CLIP on the CPU with the gradient cache, on synthetic pairs
 * (each of 8 classes is an image pattern plus noise and a 4-token caption), and
 * prints a falling loss. Exercises the whole stack: ops, tape, gradient cache, AdamW. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../autograd/gc_optim.h"
#include "../gradcache/gc_clip_task.h"

#define B 32
#define CHUNK 8
#define STEPS 40

int main(void)
{
    gc_clip_config cfg;
    gc_clip_options opt = {.device = GC_CPU, .dtype = GC_F32};
    gc_clip *m = NULL;
    if (gc_clip_config_named("clip-tiny", &cfg) != GC_OK) goto fail;
    cfg.text.vocab = 64; /* a small vocabulary is all the demo needs */
    cfg.vision.layers = cfg.text.layers = 1;
    if (gc_clip_init(&m, &cfg, &opt, 1) != GC_OK) goto fail;
    gc_adamw opt_state;
    gc_adamw_config ac = {.lr = 2e-3, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-6, .weight_decay = 0.1, .max_grad_norm = 1.0};
    if (gc_adamw_init(&opt_state, gc_clip_params(m), &ac) != GC_OK) goto fail;
    int64_t S = cfg.vision.image_size, L = 6;
    float *pix = malloc(sizeof(float) * B * 3 * S * S);
    int64_t ids[B * 6];
    printf("gc_demo: tiny CLIP, batch %d in chunks of %d, %d steps on the CPU\n", B, CHUNK, STEPS);
    double first = 0, last = 0;
    for (int step = 0; step < STEPS; step++) {
        for (int b = 0; b < B; b++) {
            uint32_t u = (uint32_t)(gc_rand_uniform(7, (uint32_t)step, 0, (uint32_t)b, 0) * 8); /* class */
            for (int64_t c = 0; c < 3; c++)
                for (int64_t y = 0; y < S; y++)
                    for (int64_t x = 0; x < S; x++) {
                        double pattern = sin((double)(u + 1) * (double)(x + 2 * y) * 0.2 + (double)c * u);
                        double noise = gc_rand_uniform(7, (uint32_t)step, 1, (uint32_t)b, (uint64_t)((c * S + y) * S + x)) - 0.5;
                        pix[((b * 3 + c) * S + y) * S + x] = (float)(pattern + noise);
                    }
            /* start, three words, end, pad: the end token has the largest id, so the
             * legacy pooling rule of eos_token_id 2 finds it */
            int64_t cap[6] = {1, 10 + u, 20 + (u % 4), 30 + (u / 4), 63, 0};
            for (int j = 0; j < L; j++) ids[b * L + j] = cap[j];
        }
        gc_pool *p = gc_pool_push();
        gc_tensor *px = gc_pool_add(gc_tensor_from_data(GC_F32, GC_CPU, 4, GC_SHAPE(B, 3, S, S), pix));
        gc_tensor *tx = gc_pool_add(gc_tensor_from_data(GC_I64, GC_CPU, 2, GC_SHAPE(B, L), ids));
        gc_clip_task task;
        gc_clip_task_init(&task, m, px, tx, CHUNK);
        gc_gradcache_result res;
        gc_status st = gc_params_zero_grad(gc_clip_params(m));
        if (st == GC_OK) st = gc_clip_task_step(&task, (gc_rand_context){1, (uint32_t)step, 0}, &res);
        if (st == GC_OK) st = gc_adamw_step(&opt_state, gc_lr_schedule(ac.lr, step, 5, STEPS, 0.1));
        gc_pool_pop(p);
        if (st != GC_OK) goto fail;
        gc_gradcache_result_clear(&res);
        if (step == 0) first = res.loss;
        last = res.loss;
        if (step % 5 == 0 || step == STEPS - 1) printf("step %3d  loss %.4f\n", step, res.loss);
    }
    printf("loss %.4f -> %.4f (chance: ln %d = %.4f)\n", first, last, B, log(B));
    free(pix);
    gc_adamw_free(&opt_state);
    gc_clip_free(m);
    return last < first ? 0 : 1;
fail:
    fprintf(stderr, "gc_demo: %s\n", gc_error_message());
    gc_clip_free(m);
    return 1;
}
