/* The CLIP BPE tokenizer against transformers 5.17 CLIPTokenizer: every line of
 * tests/fixtures/clip_tokenizer/corpus.jsonl (captions, punctuation, digits,
 * contractions, odd whitespace, accents and combining marks, scripts, emoji, special
 * tokens, long lines) and fuzz.jsonl (random Unicode), written by
 * gen_tokenizer_fixtures.py from the real CLIP vocab. Plus hand-checked cases:
 * bytes_to_unicode, words, BPE on a tiny vocab, framing, UTF-8 and file errors. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../models/gc_tokenizer.h"
#include "gc_test.h"

#ifndef GC_FIXTURES_DIR
#error "GC_FIXTURES_DIR must be defined by the build"
#endif
#define TOK_DIR GC_FIXTURES_DIR "/clip_tokenizer"

enum { BOS = 49406, EOS = 49407, CTX = 77 };

static gc_tokenizer *load_clip(void)
{
    gc_tokenizer *t = NULL;
    gc_status st = gc_tokenizer_load(TOK_DIR, NULL, &t);
    ck_assert_msg(st == GC_OK, "load %s: %s", TOK_DIR, gc_error_message());
    return t;
}

/* The vocab strings of text's ids between bos and eos, joined by spaces. */
static void tokens_of(gc_tokenizer *t, const char *text, char *buf, size_t cap)
{
    int64_t ids[CTX], n;
    ck_assert_int_eq(gc_tokenizer_encode(t, text, CTX, -1, ids, &n), GC_OK);
    ck_assert_int_eq(ids[0], gc_tokenizer_bos(t));
    ck_assert_int_eq(ids[n - 1], gc_tokenizer_eos(t));
    buf[0] = 0;
    for (int64_t i = 1; i < n - 1; i++) {
        const char *s = gc_tokenizer_token(t, ids[i]);
        ck_assert_ptr_nonnull(s);
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, "%s%s", i > 1 ? " " : "", s);
    }
}

#define ASSERT_TOKENS(t, text, want)                                                        \
    do {                                                                                    \
        char got_[2048];                                                                    \
        tokens_of((t), (text), got_, sizeof got_);                                          \
        ck_assert_msg(!strcmp(got_, (want)), "%s -> [%s], want [%s]", (text), got_, (want)); \
    } while (0)

/* ---------------------------------------------------------------- bytes_to_unicode */

START_TEST(test_bytes_to_unicode)
{
    /* printable bytes map to themselves; the rest, in order, to U+0100.. */
    ck_assert_uint_eq(gc_tokenizer_byte_char('!'), '!');
    ck_assert_uint_eq(gc_tokenizer_byte_char('~'), '~');
    ck_assert_uint_eq(gc_tokenizer_byte_char(0xA1), 0xA1);
    ck_assert_uint_eq(gc_tokenizer_byte_char(0xAC), 0xAC);
    ck_assert_uint_eq(gc_tokenizer_byte_char(0xAE), 0xAE);
    ck_assert_uint_eq(gc_tokenizer_byte_char(0xFF), 0xFF);
    ck_assert_uint_eq(gc_tokenizer_byte_char(0x00), 0x100);
    ck_assert_uint_eq(gc_tokenizer_byte_char(' '), 0x120); /* 'Ġ' */
    ck_assert_uint_eq(gc_tokenizer_byte_char(0x7F), 0x121);
    ck_assert_uint_eq(gc_tokenizer_byte_char(0xA0), 0x142);
    ck_assert_uint_eq(gc_tokenizer_byte_char(0xAD), 0x143);
    bool seen[0x144] = {0};
    for (int b = 0; b < 256; b++) {
        uint32_t c = gc_tokenizer_byte_char((uint8_t)b);
        ck_assert_uint_lt(c, 0x144);
        ck_assert_msg(!seen[c], "byte %d maps to a code point already used", b);
        seen[c] = true;
    }
    /* ids 0..255 are the byte symbols in dict order (printables first), 256.. the same + </w> */
    gc_tokenizer *t = load_clip();
    int id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++) {
            bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
            if (printable != (pass == 0)) continue;
            uint32_t c = gc_tokenizer_byte_char((uint8_t)b);
            char want[16];
            if (c < 0x80) snprintf(want, sizeof want, "%c", (char)c);
            else snprintf(want, sizeof want, "%c%c", (char)(0xC0 | (c >> 6)), (char)(0x80 | (c & 0x3F)));
            ck_assert_str_eq(gc_tokenizer_token(t, id), want);
            strcat(want, "</w>");
            ck_assert_str_eq(gc_tokenizer_token(t, 256 + id), want);
            id++;
        }
    ck_assert_str_eq(gc_tokenizer_token(t, 0), "!");
    gc_tokenizer_free(t);
}
END_TEST

START_TEST(test_load_clip)
{
    gc_tokenizer *t = load_clip();
    ck_assert_int_eq(gc_tokenizer_vocab_size(t), 49408);
    ck_assert_int_eq(gc_tokenizer_bos(t), BOS);
    ck_assert_int_eq(gc_tokenizer_eos(t), EOS);
    ck_assert_str_eq(gc_tokenizer_token(t, BOS), "<|startoftext|>");
    ck_assert_str_eq(gc_tokenizer_token(t, EOS), "<|endoftext|>");
    ck_assert_str_eq(gc_tokenizer_token(t, 512), "in");   /* the first merge, "i n" */
    ck_assert_str_eq(gc_tokenizer_token(t, 49405), "jekyll</w>"); /* the last, "jeky ll</w>" */
    ck_assert_ptr_null(gc_tokenizer_token(t, -1));
    ck_assert_ptr_null(gc_tokenizer_token(t, 49408));
    gc_tokenizer_free(t);
    /* explicit file paths */
    ck_assert_int_eq(gc_tokenizer_load(TOK_DIR "/vocab.json", TOK_DIR "/merges.txt", &t), GC_OK);
    ck_assert_int_eq(gc_tokenizer_vocab_size(t), 49408);
    gc_tokenizer_free(t);
    gc_tokenizer_free(NULL);
}
END_TEST

/* ---------------------------------------------------------------- hand-checked words */

START_TEST(test_words)
{
    gc_tokenizer *t = load_clip();
    ASSERT_TOKENS(t, "a photo of a cat", "a</w> photo</w> of</w> a</w> cat</w>");
    ASSERT_TOKENS(t, "  A   PHOTO\tof\na CAT  ", "a</w> photo</w> of</w> a</w> cat</w>");
    ASSERT_TOKENS(t, "Hello, World!", "hello</w> ,</w> world</w> !</w>");
    ASSERT_TOKENS(t, "1234", "1</w> 2</w> 3</w> 4</w>");   /* each digit alone */
    ASSERT_TOKENS(t, "it's", "it</w> 's</w>");
    ASSERT_TOKENS(t, "IT'S", "it</w> 's</w>");                /* lowercased before the split */
    ASSERT_TOKENS(t, "wait...", "wait</w> ...</w>");         /* a punctuation run */
    ASSERT_TOKENS(t, "café", "cafÃ©</w>");                   /* é = C3 A9 -> 'Ã' '©' */
    ASSERT_TOKENS(t, "cafe\xcc\x81", "cafÃ©</w>");           /* NFC composes e + U+0301 */
    ASSERT_TOKENS(t, "", "");
    ASSERT_TOKENS(t, " \t\n ", "");
    /* specials: in the raw text they are tokens; lowercased ones split in three */
    ASSERT_TOKENS(t, "a<|endoftext|>b", "a</w> <|endoftext|> b</w>");
    ASSERT_TOKENS(t, "<|ENDOFTEXT|>!", "< |</w> endof text</w> | ></w> !</w>");
    gc_tokenizer_free(t);
}
END_TEST

/* ---------------------------------------------------------------- a tiny vocab */

typedef struct tmpdir {
    char path[64];
} tmpdir;

static void tmp_make(tmpdir *d)
{
    snprintf(d->path, sizeof d->path, "/tmp/gc_tok_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d->path));
}

static void tmp_write(const tmpdir *d, const char *name, const char *text)
{
    char p[128];
    snprintf(p, sizeof p, "%s/%s", d->path, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static void tmp_remove(const tmpdir *d)
{
    char p[128];
    snprintf(p, sizeof p, "%s/vocab.json", d->path);
    unlink(p);
    snprintf(p, sizeof p, "%s/merges.txt", d->path);
    unlink(p);
    snprintf(p, sizeof p, "%s/tokenizer.json", d->path);
    unlink(p);
    rmdir(d->path);
}

static void utf8_of(uint32_t c, char *o)
{
    if (c < 0x80) { o[0] = (char)c; o[1] = 0; }
    else { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 0x3F)); o[2] = 0; }
}

/* A vocab.json with the 512 byte symbols (ids 0..511 in byte order), extra tokens
 * from 512, then the two specials; `drop` (if not NULL) is left out. Caller frees. */
static char *tiny_vocab(const char *const *extra, int n_extra, const char *drop)
{
    cJSON *o = cJSON_CreateObject();
    char s[16];
    int id = 0;
    for (int eow = 0; eow < 2; eow++)
        for (int b = 0; b < 256; b++, id++) {
            utf8_of(gc_tokenizer_byte_char((uint8_t)b), s);
            if (eow) strcat(s, "</w>");
            if (!drop || strcmp(drop, s)) cJSON_AddNumberToObject(o, s, id);
        }
    for (int i = 0; i < n_extra; i++) cJSON_AddNumberToObject(o, extra[i], id++);
    if (!drop || strcmp(drop, "<|startoftext|>")) cJSON_AddNumberToObject(o, "<|startoftext|>", id);
    id++;
    if (!drop || strcmp(drop, "<|endoftext|>")) cJSON_AddNumberToObject(o, "<|endoftext|>", id);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return txt;
}

static gc_tokenizer *tiny_tokenizer(tmpdir *d, const char *const *extra, int n_extra, const char *merges)
{
    tmp_make(d);
    char *v = tiny_vocab(extra, n_extra, NULL);
    tmp_write(d, "vocab.json", v);
    free(v);
    tmp_write(d, "merges.txt", merges);
    gc_tokenizer *t = NULL;
    gc_status st = gc_tokenizer_load(d->path, NULL, &t);
    ck_assert_msg(st == GC_OK, "tiny vocab: %s", gc_error_message());
    return t;
}

START_TEST(test_bpe_tiny)
{
    static const char *const extra[] = {"ll", "he", "hell", "el", "lo</w>", "aa", "aa</w>"};
    tmpdir d;
    /* ranks: l l (0), h e (1), he ll (2): hello -> h e ll o</w> -> he ll o</w> -> hell o</w> */
    gc_tokenizer *t = tiny_tokenizer(&d, extra, 7, "#version: 0.2\nl l\nh e\nhe ll\na a\n");
    ck_assert_int_eq(gc_tokenizer_vocab_size(t), 512 + 7 + 2);
    ck_assert_int_eq(gc_tokenizer_bos(t), 519);
    ASSERT_TOKENS(t, "hello", "hell o</w>");
    /* same pair twice: merged left to right; a a a</w> -> aa a</w> */
    ASSERT_TOKENS(t, "aaa", "aa a</w>");
    ASSERT_TOKENS(t, "aaaa", "aa a a</w>");
    gc_tokenizer_free(t);
    tmp_remove(&d);
    /* the lowest rank wins, wherever it is: e l (0) before l l (1) -> h el l o</w>;
     * a a</w> (0) before a a (1) -> a aa</w>; \r\n line ends are accepted */
    t = tiny_tokenizer(&d, extra, 7, "#version: 0.2\r\ne l\r\nl l\r\nh e\r\nl o</w>\r\na a</w>\r\na a\r\n");
    ASSERT_TOKENS(t, "hello", "h el lo</w>");
    ASSERT_TOKENS(t, "aaa", "a aa</w>");
    gc_tokenizer_free(t);
    tmp_remove(&d);
}
END_TEST

/* ---------------------------------------------------------------- framing */

START_TEST(test_framing)
{
    gc_tokenizer *t = load_clip();
    int64_t ids[CTX], n = -1;
    int64_t a, b, c;
    /* the ids of single words */
    ck_assert_int_eq(gc_tokenizer_encode(t, "a", CTX, 0, ids, &n), GC_OK);
    ck_assert_int_eq(n, 3);
    a = ids[1];
    ck_assert_str_eq(gc_tokenizer_token(t, a), "a</w>");
    ck_assert_int_eq(gc_tokenizer_encode(t, "b", CTX, 0, ids, &n), GC_OK);
    b = ids[1];
    ck_assert_int_eq(gc_tokenizer_encode(t, "c", CTX, 0, ids, &n), GC_OK);
    c = ids[1];
    /* fits: [bos a b eos pad] */
    ck_assert_int_eq(gc_tokenizer_encode(t, "a b", 5, -7, ids, &n), GC_OK);
    ck_assert_int_eq(n, 4);
    int64_t w1[] = {BOS, a, b, EOS, -7};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(ids[i], w1[i]);
    /* exactly full: [bos a b c eos] */
    ck_assert_int_eq(gc_tokenizer_encode(t, "a b c", 5, 0, ids, &n), GC_OK);
    ck_assert_int_eq(n, 5);
    int64_t w2[] = {BOS, a, b, c, EOS};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(ids[i], w2[i]);
    /* too long: cut to 5, the last forced to eos */
    ck_assert_int_eq(gc_tokenizer_encode(t, "a b c a b c", 5, 0, ids, &n), GC_OK);
    ck_assert_int_eq(n, 5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(ids[i], w2[i]);
    /* ctx_len 2: only bos eos */
    ck_assert_int_eq(gc_tokenizer_encode(t, "a b c", 2, 0, ids, &n), GC_OK);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(ids[0], BOS);
    ck_assert_int_eq(ids[1], EOS);
    /* empty: bos eos then padding; OpenAI pads 0, HF pads eos */
    for (int pad = 0; pad < 2; pad++) {
        int64_t p = pad ? EOS : 0;
        ck_assert_int_eq(gc_tokenizer_encode(t, "", CTX, p, ids, &n), GC_OK);
        ck_assert_int_eq(n, 2);
        ck_assert_int_eq(ids[0], BOS);
        ck_assert_int_eq(ids[1], EOS);
        for (int i = 2; i < CTX; i++) ck_assert_int_eq(ids[i], p);
    }
    ck_assert_int_eq(gc_tokenizer_encode(t, "a", CTX, 0, ids, NULL), GC_OK); /* n_out is optional */
    /* bad arguments */
    gc_error_clear();
    ck_assert_int_eq(gc_tokenizer_encode(t, "a", 1, 0, ids, &n), GC_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(gc_error_message(), "ctx_len"));
    gc_error_clear();
    ck_assert_int_eq(gc_tokenizer_encode(t, NULL, CTX, 0, ids, &n), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_int_eq(gc_tokenizer_encode(NULL, "a", CTX, 0, ids, &n), GC_ERR_INVALID);
    gc_error_clear();
    ck_assert_int_eq(gc_tokenizer_encode(t, "a", CTX, 0, NULL, &n), GC_ERR_INVALID);
    gc_error_clear();
    gc_tokenizer_free(t);
}
END_TEST

START_TEST(test_invalid_utf8)
{
    static const struct { const char *s; int at; } bad[] = {
        {"\xff", 0}, {"abc\x80", 3}, {"\xc0\xaf", 0}, {"\xc1\xbf", 0}, {"\xe0\x80\xaf", 0}, {"\xed\xa0\x80", 0},
        {"\xf0\x80\x80\xaf", 0}, {"\xf4\x90\x80\x80", 0}, {"\xf5\x80\x80\x80", 0}, {"ok \xe2\x82", 3},
        {"\xc3", 0}, {"x\xc3(", 1}, {"\xe2\x28\xa1", 0}, {"caf\xe9", 3},
    };
    static const char *const good[] = {"\xf4\x8f\xbf\xbf", "\xef\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80", "\xc2\x80",
                                       "\xf0\x90\x80\x80"};
    gc_tokenizer *t = load_clip();
    int64_t ids[8], n;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gc_error_clear();
        ck_assert_int_eq(gc_tokenizer_encode(t, bad[i].s, 8, 0, ids, &n), GC_ERR_INVALID);
        char want[32];
        snprintf(want, sizeof want, "byte %d ", bad[i].at);
        ck_assert_msg(strstr(gc_error_message(), want), "case %zu: \"%s\" lacks \"%s\"", i, gc_error_message(), want);
        ck_assert_int_eq(n, 2);
        ck_assert_int_eq(ids[0], BOS);
        ck_assert_int_eq(ids[1], EOS);
        for (int j = 2; j < 8; j++) ck_assert_int_eq(ids[j], 0);
    }
    gc_error_clear();
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ck_assert_msg(gc_tokenizer_encode(t, good[i], 8, 0, ids, &n) == GC_OK, "good case %zu: %s", i, gc_error_message());
        ck_assert_int_gt(n, 2);
    }
    gc_tokenizer_free(t);
}
END_TEST

/* ---------------------------------------------------------------- file errors */

static void expect_load_error(const char *dir, gc_status code, const char *in_msg, const char *in_msg2)
{
    gc_tokenizer *t = (gc_tokenizer *)&t; /* must be reset to NULL */
    gc_error_clear();
    gc_status st = gc_tokenizer_load(dir, NULL, &t);
    ck_assert_msg(st == code, "want %s, got %s: %s", gc_status_name(code), gc_status_name(st), gc_error_message());
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(gc_error_message(), in_msg), "\"%s\" lacks \"%s\"", gc_error_message(), in_msg);
    if (in_msg2) ck_assert_msg(strstr(gc_error_message(), in_msg2), "\"%s\" lacks \"%s\"", gc_error_message(), in_msg2);
    gc_error_clear();
}

START_TEST(test_load_errors)
{
    static const char *const extra[] = {"ll", "he"};
    tmpdir d;
    tmp_make(&d);
    char vpath[128], mpath[128];
    snprintf(vpath, sizeof vpath, "%s/vocab.json", d.path);
    snprintf(mpath, sizeof mpath, "%s/merges.txt", d.path);
    expect_load_error("/nonexistent/gc_tok", GC_ERR_IO, "/nonexistent/gc_tok", NULL);
    expect_load_error(d.path, GC_ERR_IO, vpath, NULL); /* empty dir: no vocab.json */
    char *v = tiny_vocab(extra, 2, NULL);
    tmp_write(&d, "vocab.json", v);
    expect_load_error(d.path, GC_ERR_IO, mpath, NULL); /* no merges.txt */
    tmp_write(&d, "merges.txt", "#version: 0.2\nl l\nh e\n");
    gc_tokenizer *t = NULL;
    ck_assert_int_eq(gc_tokenizer_load(d.path, NULL, &t), GC_OK);
    gc_tokenizer_free(t);
    /* corrupt vocab: truncated, not an object, a string id, a negative id */
    v[strlen(v) / 2] = 0;
    tmp_write(&d, "vocab.json", v);
    free(v);
    expect_load_error(d.path, GC_ERR_FORMAT, vpath, "line 1");
    tmp_write(&d, "vocab.json", "[1, 2]");
    expect_load_error(d.path, GC_ERR_FORMAT, vpath, NULL);
    tmp_write(&d, "vocab.json", "{\"a\": \"1\"}");
    expect_load_error(d.path, GC_ERR_FORMAT, vpath, "\"a\"");
    tmp_write(&d, "vocab.json", "{\"a\": -1}");
    expect_load_error(d.path, GC_ERR_FORMAT, vpath, "\"a\"");
    tmp_write(&d, "vocab.json", "{\"a\": 1.5}");
    expect_load_error(d.path, GC_ERR_FORMAT, vpath, "\"a\"");
    /* a missing byte symbol or special */
    v = tiny_vocab(extra, 2, "Ġ</w>");
    tmp_write(&d, "vocab.json", v);
    free(v);
    expect_load_error(d.path, GC_ERR_FORMAT, vpath, "0x20");
    v = tiny_vocab(extra, 2, "<|endoftext|>");
    tmp_write(&d, "vocab.json", v);
    free(v);
    expect_load_error(d.path, GC_ERR_FORMAT, vpath, "<|endoftext|>");
    /* corrupt merges: a bad line, a token not in the vocab, a result not in the vocab */
    v = tiny_vocab(extra, 2, NULL);
    tmp_write(&d, "vocab.json", v);
    free(v);
    tmp_write(&d, "merges.txt", "#version: 0.2\nl l\nh e x\n");
    expect_load_error(d.path, GC_ERR_FORMAT, mpath, ":3:");
    tmp_write(&d, "merges.txt", "#version: 0.2\nl l\n\nh e\n");
    expect_load_error(d.path, GC_ERR_FORMAT, mpath, ":3:");
    tmp_write(&d, "merges.txt", "#version: 0.2\nl l\nzz e\n");
    expect_load_error(d.path, GC_ERR_FORMAT, mpath, "\"zz\"");
    tmp_write(&d, "merges.txt", "l l\nh l\n");
    expect_load_error(d.path, GC_ERR_FORMAT, mpath, "\"hl\"");
    /* a file given as the directory */
    expect_load_error(vpath, GC_ERR_INVALID, vpath, NULL);
    tmp_remove(&d);
}
END_TEST

/* ---------------------------------------------------------------- the HF corpus */

typedef struct row {
    char *text;
    int64_t *ids;
    int n_ids, n;
} row;

static row *read_rows(const char *name, int *count)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", TOK_DIR, name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    row *rows = NULL;
    int n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        ck_assert_msg(o != NULL, "%s:%d: bad JSON", name, n + 1);
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text"), *ids = cJSON_GetObjectItemCaseSensitive(o, "ids");
        const cJSON *nn = cJSON_GetObjectItemCaseSensitive(o, "n");
        ck_assert(cJSON_IsString(text) && cJSON_IsArray(ids));
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            rows = realloc(rows, (size_t)cap * sizeof *rows);
        }
        row *r = &rows[n++];
        r->text = strdup(text->valuestring);
        r->n_ids = cJSON_GetArraySize(ids);
        r->ids = malloc(sizeof(int64_t) * (size_t)(r->n_ids + 1));
        int k = 0;
        for (const cJSON *e = ids->child; e; e = e->next) r->ids[k++] = (int64_t)e->valuedouble;
        r->n = cJSON_IsNumber(nn) ? nn->valueint : r->n_ids;
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    *count = n;
    return rows;
}

static void free_rows(row *rows, int n)
{
    for (int i = 0; i < n; i++) {
        free(rows[i].text);
        free(rows[i].ids);
    }
    free(rows);
}

static void print_ids(const gc_tokenizer *t, const char *what, const int64_t *ids, int n)
{
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n; i++) {
        const char *s = gc_tokenizer_token(t, ids[i]);
        fprintf(stderr, " %lld(%s)", (long long)ids[i], s ? s : "?");
    }
    fprintf(stderr, "\n");
}

/* Encodes every row with ctx_len (padding with pad) and compares with the stored ids
 * (all ctx_len of them when padded, else the n before padding); returns the mismatches. */
static int check_rows(gc_tokenizer *t, const char *name, const row *rows, int count, int64_t ctx, int64_t pad, bool padded)
{
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)ctx), n;
    int bad = 0;
    for (int i = 0; i < count; i++) {
        const row *r = &rows[i];
        gc_status st = gc_tokenizer_encode(t, r->text, ctx, pad, ids, &n);
        bool ok = st == GC_OK && n == r->n;
        for (int64_t j = 0; ok && j < (padded ? ctx : n); j++) {
            int64_t want = j < r->n ? r->ids[j] : pad; /* the file holds HF's padding (eos) */
            ok = ids[j] == want;
        }
        if (!ok) {
            if (++bad <= 10) {
                cJSON *s = cJSON_CreateString(r->text);
                char *js = cJSON_PrintUnformatted(s);
                fprintf(stderr, "%s:%d: %s: %s; n %lld, want %d\n", name, i + 1, js, gc_status_name(st), (long long)n, r->n);
                print_ids(t, "got ", ids, (int)n);
                print_ids(t, "want", r->ids, r->n);
                free(js);
                cJSON_Delete(s);
            }
            gc_error_clear();
        }
    }
    free(ids);
    if (bad) fprintf(stderr, "%s: %d of %d lines differ\n", name, bad, count);
    return bad;
}

START_TEST(test_corpus)
{
    gc_tokenizer *t = load_clip();
    int count;
    row *rows = read_rows("corpus.jsonl", &count);
    ck_assert_int_ge(count, 300);
    for (int i = 0; i < count; i++) ck_assert_int_eq(rows[i].n_ids, CTX);
    int bad = check_rows(t, "corpus.jsonl (pad eos)", rows, count, CTX, EOS, true);
    bad += check_rows(t, "corpus.jsonl (pad 0)", rows, count, CTX, 0, true);
    free_rows(rows, count);
    gc_tokenizer_free(t);
    ck_assert_msg(bad == 0, "%d mismatches against transformers (see stderr)", bad);
}
END_TEST

START_TEST(test_fuzz)
{
    gc_tokenizer *t = load_clip();
    int count;
    row *rows = read_rows("fuzz.jsonl", &count);
    ck_assert_int_ge(count, 100);
    int bad = check_rows(t, "fuzz.jsonl", rows, count, 256, 0, false);
    free_rows(rows, count);
    gc_tokenizer_free(t);
    ck_assert_msg(bad == 0, "%d mismatches against transformers (see stderr)", bad);
}
END_TEST

/* tokenizer.json beside the vocab marks the special tokens normalized: they are then
 * matched after NFC + lowercasing (expected ids from transformers with such a file) */
START_TEST(test_specials_normalized)
{
    tmpdir d;
    tmp_make(&d);
    char p[128];
    snprintf(p, sizeof p, "%s/vocab.json", d.path);
    ck_assert_int_eq(symlink(TOK_DIR "/vocab.json", p), 0);
    snprintf(p, sizeof p, "%s/merges.txt", d.path);
    ck_assert_int_eq(symlink(TOK_DIR "/merges.txt", p), 0);
    /* a malformed tokenizer.json is an error naming it */
    snprintf(p, sizeof p, "%s/tokenizer.json", d.path);
    tmp_write(&d, "tokenizer.json", "{\"added_tokens\": [{\"content\": 5}]}");
    expect_load_error(d.path, GC_ERR_FORMAT, p, "content");
    tmp_write(&d, "tokenizer.json",
              "{\"added_tokens\": [{\"id\": 49406, \"content\": \"<|startoftext|>\", \"normalized\": true},"
              " {\"id\": 49407, \"content\": \"<|endoftext|>\", \"normalized\": true}], \"model\": {}}");
    gc_tokenizer *t = NULL;
    ck_assert_msg(gc_tokenizer_load(d.path, NULL, &t) == GC_OK, "%s", gc_error_message());
    ASSERT_TOKENS(t, "a<|ENDOFTEXT|>b", "a</w> <|endoftext|> b</w>");
    int count;
    row *rows = read_rows("specials_normalized.jsonl", &count);
    ck_assert_int_ge(count, 20);
    int bad = check_rows(t, "specials_normalized.jsonl", rows, count, CTX, EOS, true);
    free_rows(rows, count);
    gc_tokenizer_free(t);
    /* without it (the default), the same text is not a special token */
    t = load_clip();
    ASSERT_TOKENS(t, "a<|ENDOFTEXT|>b", "a</w> < |</w> endof text</w> | ></w> b</w>");
    gc_tokenizer_free(t);
    tmp_remove(&d);
    ck_assert_msg(bad == 0, "%d mismatches against transformers (see stderr)", bad);
}
END_TEST

/* ---------------------------------------------------------------- threads and speed */

typedef struct thread_arg {
    gc_tokenizer *t;
    const row *rows;
    int count, bad;
} thread_arg;

static void *thread_main(void *p)
{
    thread_arg *a = p;
    int64_t ids[CTX], n;
    for (int rep = 0; rep < 20; rep++)
        for (int i = 0; i < a->count; i++) {
            const row *r = &a->rows[(i * 7 + rep) % a->count];
            if (gc_tokenizer_encode(a->t, r->text, CTX, EOS, ids, &n) != GC_OK || n != r->n ||
                memcmp(ids, r->ids, sizeof ids) != 0)
                a->bad++;
        }
    return NULL;
}

START_TEST(test_threads)
{
    gc_tokenizer *t = load_clip(); /* a fresh cache, filled by both threads at once */
    int count;
    row *rows = read_rows("corpus.jsonl", &count);
    thread_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){t, rows, count, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].bad, 0);
    }
    free_rows(rows, count);
    gc_tokenizer_free(t);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

START_TEST(test_speed)
{
    gc_tokenizer *t = load_clip();
    int count;
    row *rows = read_rows("corpus.jsonl", &count);
    int64_t ids[CTX], n;
    /* the first 60 rows are ordinary captions; vary them so the cache does not hold every word */
    char buf[512];
    int done = 0;
    double t0 = now_s();
    for (int rep = 0; rep < 400; rep++)
        for (int i = 0; i < 60; i++, done++) {
            snprintf(buf, sizeof buf, "%s %d%c", rows[i].text, rep, 'a' + (char)(rep % 26));
            ck_assert_int_eq(gc_tokenizer_encode(t, buf, CTX, EOS, ids, &n), GC_OK);
        }
    double dt = now_s() - t0;
    /* and the whole corpus (long lines, scripts) */
    double t1 = now_s();
    for (int rep = 0; rep < 10; rep++)
        for (int i = 0; i < count; i++) ck_assert_int_eq(gc_tokenizer_encode(t, rows[i].text, CTX, EOS, ids, &n), GC_OK);
    double dt2 = now_s() - t1;
    fprintf(stderr, "tokenizer: %.0f captions/s (%d captions); whole corpus %.0f lines/s\n", done / dt, done,
            10 * count / dt2);
    ck_assert_msg(done / dt > 10000, "only %.0f captions/s", done / dt);
    free_rows(rows, count);
    gc_tokenizer_free(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = gc_test_tcase("unit");
    tcase_add_test(tc, test_bytes_to_unicode);
    tcase_add_test(tc, test_load_clip);
    tcase_add_test(tc, test_words);
    tcase_add_test(tc, test_bpe_tiny);
    tcase_add_test(tc, test_framing);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_load_errors);
    suite_add_tcase(s, tc);
    TCase *hf = gc_test_tcase("transformers");
    tcase_add_test(hf, test_corpus);
    tcase_add_test(hf, test_fuzz);
    tcase_add_test(hf, test_specials_normalized);
    tcase_add_test(hf, test_threads);
    tcase_add_test(hf, test_speed);
    suite_add_tcase(s, hf);
    return gc_test_run(s);
}
