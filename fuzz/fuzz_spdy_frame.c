/*
 * fuzz_spdy_frame.c - fuzz target of the SPDY/3 framer (src/spdy): arbitrary
 * bytes into the frame decoder, header blocks inflated in one stream.
 *
 * Checks beyond "no crash, no leak, no UB":
 *  - chunking does not matter: the input decoded in one feed and decoded in
 *    chunks (sizes drawn from the input) give the same frames, the same DATA
 *    bytes and the same error;
 *  - every header block the decoder accepts, our encoder accepts too, and our
 *    decoder reads the encoding back to the same pairs.
 *
 * Built with LC_FUZZ_LIBFUZZER (clang -fsanitize=fuzzer) it is a libFuzzer
 * target; otherwise its main() runs the files named on the command line
 * (ctest replays the seed corpus that way in every build).
 */
#include "spdy/spdy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                               \
    do {                                                                       \
        if (!(c)) {                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Small limits, so that the fuzzer reaches them. */
static const lc_spdy_limits fuzz_limits = {
    .max_frame = 1u << 20,
    .max_control_frame = 1u << 16,
    .max_header_block = 4096,
    .max_header_pairs = 32,
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    return (h ^ v) * 0x100000001b3ull;
}

static uint64_t mix_bytes(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = mix(h, b[i]);
    return h;
}

/* Re-encodes a decoded header block and decodes it back (fresh contexts), at
 * level (sessions use 0: stored blocks our encoder writes itself; the spdy
 * tests 6: zlib's). */
static void roundtrip_headers_at(const lc_spdy_header *h, size_t n, int level)
{
    lc_spdy_deflater z;
    lc_spdy_inflater in;
    lc_buf out;
    lc__spdy_deflater_init(&z, level);
    lc__spdy_inflater_init(&in);
    lc__buf_init(&out);
    int r = lc__spdy_deflate_block(&z, &out, h, n);
    CHECK(r == 0 || r == LC_ENOMEM);
    if (r == 0) {
        const lc_spdy_header *back;
        size_t nback;
        r = lc__spdy_inflate_block(&in, &fuzz_limits, out.data, out.len, &back, &nback);
        CHECK(r == 0 || r == LC_ENOMEM);
        if (r == 0) {
            CHECK(nback == n);
            for (size_t i = 0; i < n; i++) {
                CHECK(back[i].name_len == h[i].name_len && back[i].value_len == h[i].value_len);
                CHECK(memcmp(back[i].name, h[i].name, h[i].name_len) == 0);
                CHECK(h[i].value_len == 0 || memcmp(back[i].value, h[i].value, h[i].value_len) == 0);
            }
        }
    }
    lc__buf_free(&out);
    lc__spdy_inflater_free(&in);
    lc__spdy_deflater_free(&z);
}

static void roundtrip_headers(const lc_spdy_header *h, size_t n)
{
    roundtrip_headers_at(h, n, Z_DEFAULT_COMPRESSION);
    roundtrip_headers_at(h, n, 0);
}

/*
 * Decodes data[0..size) fed in chunks of the sizes chunk(i) gives (0: one
 * feed). Returns a digest of the frames seen, with the final error or state.
 */
static uint64_t run(const uint8_t *data, size_t size, uint8_t seed, int check_headers)
{
    lc_spdy_decoder d;
    lc__spdy_decoder_init(&d, &fuzz_limits);
    uint64_t h = 0xcbf29ce484222325ull;
    size_t pos = 0;
    int r = 0;
    unsigned k = 0;
    while (pos < size && r >= 0) {
        size_t chunk = size - pos;
        if (seed != 0) {
            size_t c = 1 + (size_t)((seed * 31u + k++ * 7u) % (seed % 23u + 1u));
            if (c < chunk)
                chunk = c;
        }
        const uint8_t *p = data + pos;
        size_t left = chunk;
        while (left > 0) {
            lc_spdy_frame f;
            size_t used = 0;
            r = lc__spdy_decode(&d, p, left, &used, &f);
            CHECK(used <= left);
            p += used;
            left -= used;
            if (r < 0)
                break;
            if (r == 0) {
                CHECK(left == 0);
                break;
            }
            CHECK(r == LC_SPDY_FRAME);
            if (f.type == LC_SPDY_DATA) {
                CHECK(f.data_offset + f.data_len <= f.length);
                h = mix_bytes(h, f.data, f.data_len);
                if (!f.data_last)
                    continue; /* fragments: only the bytes count */
            }
            h = mix(h, (uint64_t)f.type);
            h = mix(h, f.raw_type);
            h = mix(h, f.flags);
            h = mix(h, f.length);
            h = mix(h, f.stream_id);
            h = mix(h, f.assoc_id);
            h = mix(h, f.priority);
            h = mix(h, f.slot);
            h = mix(h, f.status);
            h = mix(h, f.value);
            if (f.type == LC_SPDY_SETTINGS) {
                for (uint32_t i = 0; i < f.value; i++) {
                    lc_spdy_setting s;
                    lc__spdy_setting_get(&f, i, &s);
                    h = mix(h, s.flags);
                    h = mix(h, s.id);
                    h = mix(h, s.value);
                }
            }
            h = mix(h, f.n_headers);
            for (size_t i = 0; i < f.n_headers; i++) {
                h = mix_bytes(h, f.headers[i].name, f.headers[i].name_len);
                h = mix(h, f.headers[i].name_len);
                h = mix_bytes(h, f.headers[i].value, f.headers[i].value_len);
                h = mix(h, f.headers[i].value_len);
            }
            if (check_headers && f.headers != NULL)
                roundtrip_headers(f.headers, f.n_headers);
        }
        pos += chunk;
    }
    if (r < 0) {
        /* sticky */
        lc_spdy_frame f;
        size_t used;
        CHECK(lc__spdy_decode(&d, data, size, &used, &f) == r && used == 0);
    }
    h = mix(h, (uint64_t)(int64_t)(r < 0 ? r : 0));
    h = mix(h, (uint64_t)lc__spdy_decoder_idle(&d));
    lc__spdy_decoder_free(&d);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t whole = run(data, size, 0, 1);
    uint8_t seed = size ? (uint8_t)(data[size - 1] | 1) : 1;
    uint64_t split = run(data, size, seed, 0);
    CHECK(whole == split);
    CHECK(run(data, size, 1, 0) == whole); /* one byte at a time */
    return 0;
}

#ifndef LC_FUZZ_LIBFUZZER
#include "replay.h"

/* Plain driver: runs every file named on the command line once. */
int main(int argc, char **argv)
{
    int n = lc_fuzz_replay(argc, argv);
    if (n < 0)
        return 1;
    printf("fuzz_spdy_frame: %d input(s) ran clean\n", n);
    return 0;
}
#endif
