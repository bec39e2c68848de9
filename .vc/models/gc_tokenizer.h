/* The CLIP BPE tokenizer, giving the ids of transformers 5.x CLIPTokenizer (which is
 * backed by HF `tokenizers`; CLIPTokenizerFast is the same class) from the HF files
 * vocab.json + merges.txt found beside a CLIP checkpoint.
 *
 * Pipeline, as in tokenizers:
 *  1. "<|startoftext|>" and "<|endoftext|>" written in the raw text (case-sensitive)
 *     are special tokens and become their ids; the text between them is processed
 *     piece by piece as below. Exception: a special token that the directory's
 *     tokenizer.json marks "normalized": true in added_tokens (as tokenizers' converter
 *     writes them, e.g. in HF CLIP checkpoints) is matched after step 2 instead, so
 *     case-insensitively; transformers does the same. With vocab.json + merges.txt alone
 *     both are matched raw (CLIPTokenizer's default).
 *  2. Normalisation: Unicode NFC, then per-code point lowercase (Rust's
 *     char::to_lowercase). No ftfy, no html unescaping, no accent stripping.
 *  3. Pre-tokenisation: whitespace (\s) separates; runs of letters (\p{L}), single
 *     digits (\p{N}), runs of anything else, and the contractions 's 't 're 've 'm
 *     'll 'd are the words. A lowercased special string that was not matched in step 1
 *     (e.g. "<|ENDOFTEXT|>") becomes the three words "<|", "endoftext", "|>".
 *  4. Each word's UTF-8 bytes map through bytes_to_unicode; "</w>" is appended to its
 *     last symbol; BPE merges by rank; each symbol is a vocab id.
 *  5. ids = [bos] + words' ids + [eos]; when longer than ctx_len, cut to ctx_len and
 *     force the last to eos; then padded with pad_id (OpenAI CLIP pads 0, HF 49407).
 * The Unicode tables were probed from tokenizers itself
 * (tests/fixtures/clip_tokenizer/gen_unicode_tables.py), so they follow its Unicode
 * versions, not Python's.
 *
 * A tokenizer is read-only after loading except for its word cache, which is guarded
 * by a mutex: gc_tokenizer_encode may be called from several threads at once. */
#ifndef GC_TOKENIZER_H
#define GC_TOKENIZER_H

#include <stdint.h>

#include "../runtime/gc_error.h"

typedef struct gc_tokenizer gc_tokenizer;

/* merges == NULL: dir_or_vocab is a directory holding vocab.json and merges.txt.
 * If the directory also holds tokenizer.json, only its added_tokens' "normalized" flags
 * are read (see step 1 above).
 * Otherwise dir_or_vocab is the vocab.json path and merges the merges.txt path.
 * Errors name the file (and the line or key): GC_ERR_IO when it cannot be read,
 * GC_ERR_FORMAT when its content is malformed (bad JSON, a non-integer id, a merges
 * line that is not "a b", a merge whose parts or result are not in the vocab, a
 * missing byte symbol or special token). */
gc_status gc_tokenizer_load(const char *dir_or_vocab, const char *merges, gc_tokenizer **out);
void gc_tokenizer_free(gc_tokenizer *t);

/* Encodes NUL-terminated UTF-8 text into ids_out[ctx_len] (see the pipeline above)
 * and sets *n_out to the number of ids before padding (2 <= *n_out <= ctx_len).
 * ctx_len must be >= 2. Invalid UTF-8 (bad or truncated sequences, overlong forms,
 * surrogates, code points above U+10FFFF) is GC_ERR_INVALID naming the byte offset;
 * ids_out is then filled with [bos, eos, pad...]. n_out may be NULL. */
gc_status gc_tokenizer_encode(gc_tokenizer *t, const char *utf8, int64_t ctx_len, int64_t pad_id, int64_t *ids_out,
                              int64_t *n_out);

int64_t gc_tokenizer_bos(const gc_tokenizer *t);        /* id of <|startoftext|> (49406 for CLIP) */
int64_t gc_tokenizer_eos(const gc_tokenizer *t);        /* id of <|endoftext|> (49407 for CLIP) */
int64_t gc_tokenizer_vocab_size(const gc_tokenizer *t); /* largest id + 1 (49408 for CLIP) */
/* The vocab string of an id ("cat</w>"), or NULL if no entry has that id. */
const char *gc_tokenizer_token(const gc_tokenizer *t, int64_t id);

/* bytes_to_unicode: the code point byte b is written as in vocab strings. */
uint32_t gc_tokenizer_byte_char(uint8_t b);

#endif
