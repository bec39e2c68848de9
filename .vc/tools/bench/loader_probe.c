/* The data loader's rate: images a second through tools/loader.c (JPEG decode, then
 * DINOv3's preprocessing with and without its training augmentation), by worker count.
 * Writes DIR/img/NNNN.jpg (N synthetic 500x375 JPEGs, quality 90: the size of a typical
 * Stanford Online Products or ImageNet photo) and DIR/m.tsv once, then times batches of 64
 * after one warm-up batch, and first each stage alone on one thread (decode, the resize of
 * each preprocessing, the normalisation), per image. Built against a CPU build (build/):
 *   gcc -O2 -I. tools/bench/loader_probe.c build/tools/libgc_tools.a build/libgc.a \
 *       $(pkg-config --libs libpng libjpeg yaml-0.1 libcjson) -lpthread -lm -lgomp -o loader_probe
 *   ./loader_probe DIR [N=300] [batches=8] [max workers=nproc]
 * (a CUDA build links -lcudart -lcublasLt -lcublas -lstdc++ as well) */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jpeglib.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/gc_data.h"
#include "tools/gc_train_util.h" /* gc_now_s */

/* smooth colour waves with noise: compresses like a photo, not like a flat test card */
static int write_jpegs(const char *dir, int n)
{
    enum { W = 500, H = 375 };
    unsigned char *px = malloc(W * H * 3);
    char path[4096];
    snprintf(path, sizeof path, "%s/img", dir);
    mkdir(dir, 0755);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/m.tsv", dir);
    FILE *m = fopen(path, "w");
    if (!px || !m) return 1;
    fprintf(m, "filepath\ttitle\n");
    for (int k = 0; k < n; k++) {
        srand((unsigned)k + 1);
        const double a = rand() % 100 / 10.0, b = rand() % 100 / 10.0;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++) {
                    double v = 127 + 60 * sin(x / (20.0 + a) + c) + 40 * cos(y / (15.0 + b) - c) + rand() % 40 - 20;
                    px[(y * W + x) * 3 + c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
        snprintf(path, sizeof path, "%s/img/%04d.jpg", dir, k);
        FILE *f = fopen(path, "wb");
        if (!f) return 1;
        struct jpeg_compress_struct ci;
        struct jpeg_error_mgr je;
        ci.err = jpeg_std_error(&je);
        jpeg_create_compress(&ci);
        jpeg_stdio_dest(&ci, f);
        ci.image_width = W, ci.image_height = H, ci.input_components = 3, ci.in_color_space = JCS_RGB;
        jpeg_set_defaults(&ci);
        jpeg_set_quality(&ci, 90, TRUE);
        jpeg_start_compress(&ci, TRUE);
        while (ci.next_scanline < H) {
            JSAMPROW r = px + ci.next_scanline * W * 3;
            jpeg_write_scanlines(&ci, &r, 1);
        }
        jpeg_finish_compress(&ci);
        jpeg_destroy_compress(&ci);
        fclose(f);
        fprintf(m, "img/%04d.jpg\tx\n", k);
    }
    fclose(m);
    free(px);
    return 0;
}

static int run(const char *manifest, int workers, int nb, bool augment)
{
    const int B = 64, S = 224;
    gc_dataset *ds = gc_dataset_open_csv(manifest, '\t', "filepath", "title");
    if (!ds) return fprintf(stderr, "%s\n", gc_error_message()), 1;
    gc_loader_opts o = gc_loader_opts_default(B, S);
    o.workers = workers, o.prefetch = 2;
    o.pre = gc_preprocess_dinov3(S);
    if (augment) { /* tools/train_pairs.c's AUG_* */
        o.pre.crop_scale[0] = 0.35f, o.pre.crop_scale[1] = 1.0f, o.pre.hflip = 0.5f;
        o.pre.brightness = o.pre.contrast = o.pre.saturation = 0.3f;
    }
    gc_loader *l = gc_loader_new(ds, &o);
    const gc_batch *b = NULL;
    int rc = !l || gc_loader_next(l, &b) != GC_OK || !b;
    const double t0 = gc_now_s();
    for (int i = 0; !rc && i < nb; i++) rc = gc_loader_next(l, &b) != GC_OK || !b;
    const double dt = gc_now_s() - t0;
    if (rc) fprintf(stderr, "%s\n", gc_error_message());
    else printf("workers %2d %-17s %6.0f images/s\n", workers, augment ? "(augmented)" : "(resize)", nb * B / dt);
    gc_loader_free(l);
    gc_dataset_free(ds);
    return rc;
}

/* one thread, per image: decode, DINOv3's and CLIP's resize (and crop), the normalisation */
static int stages(const char *dir, int n)
{
    char path[4096];
    double t_dec = 0, t_dino = 0, t_clip = 0, t_norm = 0;
    const gc_preprocess pd = gc_preprocess_dinov3(224), pc = gc_preprocess_clip(224);
    float *out = malloc(sizeof(float) * 3 * 224 * 224);
    for (int k = 0; k < n && out; k++) {
        gc_image im = {0}, a = {0}, b = {0};
        snprintf(path, sizeof path, "%s/img/%04d.jpg", dir, k);
        double t0 = gc_now_s();
        if (gc_image_load(path, &im) != GC_OK) return fprintf(stderr, "%s\n", gc_error_message()), 1;
        double t1 = gc_now_s();
        if (gc_image_transform(&im, &pd, 1, 0, (uint64_t)k, &a) != GC_OK) return 1;
        double t2 = gc_now_s();
        if (gc_image_transform(&im, &pc, 1, 0, (uint64_t)k, &b) != GC_OK) return 1;
        double t3 = gc_now_s();
        gc_image_normalize(&a, &pd, out);
        double t4 = gc_now_s();
        t_dec += t1 - t0, t_dino += t2 - t1, t_clip += t3 - t2, t_norm += t4 - t3;
        gc_image_free(&im), gc_image_free(&a), gc_image_free(&b);
    }
    free(out);
    printf("one thread, per image: decode %.3f ms, DINOv3 resize %.3f ms, CLIP resize + crop %.3f ms, normalise %.3f ms\n",
           t_dec / n * 1e3, t_dino / n * 1e3, t_clip / n * 1e3, t_norm / n * 1e3);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return fprintf(stderr, "usage: %s DIR [N] [batches] [max workers]\n", argv[0]), 2;
    const int n = argc > 2 ? atoi(argv[2]) : 300, nb = argc > 3 ? atoi(argv[3]) : 8;
    const int maxw = argc > 4 ? atoi(argv[4]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    char manifest[4096];
    snprintf(manifest, sizeof manifest, "%s/m.tsv", argv[1]);
    if (access(manifest, R_OK) != 0 && write_jpegs(argv[1], n) != 0) return fprintf(stderr, "cannot write %s\n", argv[1]), 1;
    if (stages(argv[1], n < 100 ? n : 100)) return 1;
    for (int w = 1; w <= maxw; w *= 2)
        for (int aug = 0; aug < 2; aug++)
            if (run(manifest, w, nb, aug)) return 1;
    return 0;
}
