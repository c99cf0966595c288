/*
 * headers.c - SPDY/3 header blocks (src/spdy): the uncompressed name/value
 * form, and the two zlib contexts of a session (one per direction, stateful
 * across frames, sync-flushed per block, preset with the SPDY/3 dictionary).
 * Also the limits and error texts of the layer.
 */
#include "spdy/spdy.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- limits and errors --------------------------------------------------- */

void lc__spdy_limits_resolve(lc_spdy_limits *dst, const lc_spdy_limits *src)
{
    lc_spdy_limits l = {0};
    if (src != NULL)
        l = *src;
    if (l.max_frame == 0 || l.max_frame > LC_SPDY_MAX_LENGTH)
        l.max_frame = LC_SPDY_DEFAULT_MAX_FRAME;
    if (l.max_control_frame == 0)
        l.max_control_frame = LC_SPDY_DEFAULT_MAX_CONTROL_FRAME;
    if (l.max_control_frame > l.max_frame)
        l.max_control_frame = l.max_frame;
    if (l.max_header_block == 0)
        l.max_header_block = LC_SPDY_DEFAULT_MAX_HEADER_BLOCK;
    if (l.max_header_pairs == 0)
        l.max_header_pairs = LC_SPDY_DEFAULT_MAX_HEADER_PAIRS;
    *dst = l;
}

const char *lc__spdy_strerror(int code)
{
    switch (code) {
    case LC__SPDY_EVERSION:           return "spdy: control frame version is not 3";
    case LC__SPDY_EFRAME_SIZE:        return "spdy: frame length over the limit";
    case LC__SPDY_ELEN_SYN_STREAM:    return "spdy: SYN_STREAM shorter than 10 bytes";
    case LC__SPDY_ELEN_SYN_REPLY:     return "spdy: SYN_REPLY shorter than 4 bytes";
    case LC__SPDY_ELEN_RST_STREAM:    return "spdy: RST_STREAM length is not 8";
    case LC__SPDY_ELEN_SETTINGS:      return "spdy: SETTINGS length is not 4 + 8 * count";
    case LC__SPDY_ELEN_PING:          return "spdy: PING length is not 4";
    case LC__SPDY_ELEN_GOAWAY:        return "spdy: GOAWAY length is not 8";
    case LC__SPDY_ELEN_HEADERS:       return "spdy: HEADERS shorter than 4 bytes";
    case LC__SPDY_ELEN_WINDOW_UPDATE: return "spdy: WINDOW_UPDATE length is not 8";
    case LC__SPDY_ESTREAM_ZERO:       return "spdy: stream id 0 where a stream is required";
    case LC__SPDY_EZLIB:              return "spdy: header block is not valid zlib data";
    case LC__SPDY_EHBLOCK_SIZE:       return "spdy: header block inflates beyond the limit";
    case LC__SPDY_EHBLOCK:            return "spdy: malformed header block";
    case LC__SPDY_EHPAIRS:            return "spdy: too many header pairs";
    case LC__SPDY_EHUPPER:            return "spdy: upper-case header name";
    case LC__SPDY_EHDUP:              return "spdy: duplicate header name";
    case LC__SPDY_EHNAME:             return "spdy: empty header name";
    case LC__SPDY_EBROKEN:            return "spdy: header compression context failed";
    default:                          return lc_strerror(code);
    }
}

/* ---- pair rules ------------------------------------------------------------ */

const lc_spdy_header *lc__spdy_header_find(const lc_spdy_header *h, size_t n, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (h[i].name_len == len && memcmp(h[i].name, name, len) == 0)
            return &h[i];
    return NULL;
}

/* Eight bytes at a time (both ends check every name of every block, two on
 * a fresh reply channel's round trip: the byte loop was ~200 instructions of
 * it). A byte b below 0x80 is in 'A'..'Z' when b + 0x3f sets its top bit and
 * b + 0x25 does not; neither sum carries into the next byte (b + 0x3f <=
 * 0xbe), and bytes with the top bit set are left out (~x). */
static int word_has_upper(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101u, top = 0x8080808080808080u;
    uint64_t y = x & ~top;
    return ((y + ones * 0x3f) & ~(y + ones * 0x25) & ~x & top) != 0;
}

static int name_has_upper(const char *s, size_t n)
{
    uint64_t x;
    if (n < 8) {
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)(s[i] - 'A') < 26)
                return 1;
        return 0;
    }
    for (size_t i = 0; i + 8 <= n; i += 8) {
        memcpy(&x, s + i, 8);
        if (word_has_upper(x))
            return 1;
    }
    memcpy(&x, s + n - 8, 8); /* the tail, overlapping what was seen */
    return word_has_upper(x);
}

static uint32_t name_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static int same_name(const lc_spdy_header *a, const lc_spdy_header *b)
{
    return a->name_len == b->name_len && memcmp(a->name, b->name, a->name_len) == 0;
}

/*
 * 1 if a name occurs twice in h[0..n), 0 if not, LC_ENOMEM. Small blocks (the
 * libchan case: 1 to 3 pairs) compare pairwise; larger ones use an
 * open-addressing table kept in *tab, so the check stays linear up to any
 * max_header_pairs.
 */
static int has_duplicate(const lc_spdy_header *h, size_t n, uint32_t **tab, size_t *cap)
{
    if (n <= 8) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (same_name(&h[i], &h[j]))
                    return 1;
        return 0;
    }
    size_t size = 16;
    while (size < 2 * n)
        size *= 2;
    if (*cap < size) {
        uint32_t *t = realloc(*tab, size * sizeof *t);
        if (t == NULL)
            return LC_ENOMEM;
        *tab = t;
        *cap = size;
    }
    uint32_t *t = *tab;
    memset(t, 0, size * sizeof *t);
    for (size_t i = 0; i < n; i++) {
        size_t k = name_hash(h[i].name, h[i].name_len) & (size - 1);
        while (t[k] != 0) {
            if (same_name(&h[t[k] - 1], &h[i]))
                return 1;
            k = (k + 1) & (size - 1);
        }
        t[k] = (uint32_t)i + 1;
    }
    return 0;
}

/* The rules of spdy.h for a block's pairs: 0 or the decoder's error code. */
static int check_pairs(const lc_spdy_header *h, size_t n, uint32_t **tab, size_t *cap)
{
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len == 0)
            return LC__SPDY_EHNAME;
        if (name_has_upper(h[i].name, h[i].name_len))
            return LC__SPDY_EHUPPER;
    }
    int r = has_duplicate(h, n, tab, cap);
    if (r < 0)
        return r;
    return r ? LC__SPDY_EHDUP : 0;
}

/* ---- uncompressed form ------------------------------------------------------ */

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The uncompressed size of h[0..n), or 0 for a bad pair (never a real
 * size: the count alone takes 4 bytes). */
static size_t raw_size(const lc_spdy_header *h, size_t n)
{
    size_t need = 4;
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len > UINT32_MAX || h[i].value_len > UINT32_MAX ||
            (h[i].name == NULL && h[i].name_len) || (h[i].value == NULL && h[i].value_len))
            return 0;
        need += 8 + h[i].name_len + h[i].value_len; /* cannot wrap: both are in memory */
    }
    return need;
}

/* Writes the uncompressed form of h[0..n) at p (raw_size bytes). */
static void raw_write(uint8_t *p, const lc_spdy_header *h, size_t n)
{
    lc__spdy_put32(p, (uint32_t)n);
    p += 4;
    for (size_t i = 0; i < n; i++) {
        lc__spdy_put32(p, (uint32_t)h[i].name_len);
        if (h[i].name_len)
            memcpy(p + 4, h[i].name, h[i].name_len);
        p += 4 + h[i].name_len;
        lc__spdy_put32(p, (uint32_t)h[i].value_len);
        if (h[i].value_len)
            memcpy(p + 4, h[i].value, h[i].value_len);
        p += 4 + h[i].value_len;
    }
}

static int build_checked(lc_buf *out, const lc_spdy_header *h, size_t n)
{
    size_t need = raw_size(h, n);
    if (need == 0)
        return LC_EINVAL;
    if (lc__buf_reserve(out, need) != 0)
        return LC_ENOMEM;
    raw_write(out->data + out->len, h, n);
    out->len += need;
    return 0;
}

static int encoder_check(const lc_spdy_header *h, size_t n, uint32_t **tab, size_t *cap)
{
    if (n > UINT32_MAX || (h == NULL && n))
        return LC_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (h[i].name == NULL)
            return LC_EINVAL;
    int r = check_pairs(h, n, tab, cap);
    if (r == LC_ENOMEM)
        return r;
    return r < 0 ? LC_EINVAL : 0;
}

int lc__spdy_hblock_build(lc_buf *out, const lc_spdy_header *h, size_t n)
{
    uint32_t *tab = NULL;
    size_t cap = 0;
    int r = encoder_check(h, n, &tab, &cap);
    free(tab);
    if (r == 0)
        r = build_checked(out, h, n);
    return r;
}

/*
 * Parses the inflated block z->out into z->pairs. Every length is checked
 * against the bytes that remain before it is used; the count is checked
 * against max_pairs and against the room left (each pair takes >= 8 bytes)
 * before the pair array grows.
 */
static int parse_block(lc_spdy_inflater *z, uint32_t max_pairs, size_t *npairs)
{
    const uint8_t *p = z->out.data;
    size_t left = z->out.len;
    if (left < 4)
        return LC__SPDY_EHBLOCK;
    uint32_t count = get32(p);
    p += 4;
    left -= 4;
    if (count > max_pairs)
        return LC__SPDY_EHPAIRS;
    if (count > left / 8)
        return LC__SPDY_EHBLOCK;
    if (z->pairs_cap < count) {
        size_t ncap = z->pairs_cap ? z->pairs_cap : 4;
        while (ncap < count)
            ncap *= 2;
        lc_spdy_header *np = realloc(z->pairs, ncap * sizeof *np);
        if (np == NULL)
            return LC_ENOMEM;
        z->pairs = np;
        z->pairs_cap = ncap;
    }
    for (uint32_t i = 0; i < count; i++) {
        lc_spdy_header *h = &z->pairs[i];
        for (int part = 0; part < 2; part++) {
            if (left < 4)
                return LC__SPDY_EHBLOCK;
            uint32_t len = get32(p);
            p += 4;
            left -= 4;
            if (len > left)
                return LC__SPDY_EHBLOCK;
            if (part == 0) {
                h->name = (const char *)p;
                h->name_len = len;
            } else {
                h->value = (const char *)p;
                h->value_len = len;
            }
            p += len;
            left -= len;
        }
    }
    if (left != 0)
        return LC__SPDY_EHBLOCK;
    int r = check_pairs(z->pairs, count, &z->dup_tab, &z->dup_cap);
    if (r < 0)
        return r;
    *npairs = count;
    return 0;
}

/* ---- inflater ------------------------------------------------------------ */

/*
 * Our sessions send header blocks as stored deflate blocks (see
 * stored_blocks below), and a fresh reply channel puts two header blocks on
 * a round trip's path. Copying stored blocks out here costs ~23 ns a block,
 * against ~34 through zlib's raw inflate and ~62 through the zlib-wrapped
 * inflate used before, which also checksummed (bench/bench_spdy measures
 * the first two; each figure without its ~25 ns of clock), and leaves
 * zlib's 40 KiB of state out of the cache. A stored block never refers back, but
 * a later compressed block may refer up to 32 KiB back, into the dictionary
 * or any earlier block: that history is kept, and becomes zlib's dictionary
 * (raw inflate, which accepts one at any point) the moment a block is not a
 * whole stored block within its frame. From then on zlib does everything.
 */
#define HIST_SIZE 32768u

void lc__spdy_inflater_init(lc_spdy_inflater *z)
{
    memset(z, 0, sizeof *z);
    lc__buf_init(&z->out);
}

void lc__spdy_inflater_free(lc_spdy_inflater *z)
{
    if (z->zlib)
        inflateEnd(&z->zs);
    free(z->hist);
    lc__buf_free(&z->out);
    free(z->pairs);
    free(z->dup_tab);
    memset(z, 0, sizeof *z);
}

static int inflate_fail(lc_spdy_inflater *z, int code)
{
    z->state = code;
    return code;
}

/* Appends p[0..n) to the history ring (only its last 32 KiB matter). */
static void hist_put(lc_spdy_inflater *z, const uint8_t *p, size_t n)
{
    if (n == 0)
        return; /* (p may be NULL) */
    size_t skip = n > HIST_SIZE ? n - HIST_SIZE : 0;
    z->hist_total += skip;
    p += skip;
    n -= skip;
    size_t at = (size_t)(z->hist_total % HIST_SIZE);
    size_t first = n < HIST_SIZE - at ? n : HIST_SIZE - at;
    memcpy(z->hist + at, p, first);
    memcpy(z->hist, p + first, n - first);
    z->hist_total += n;
}

/*
 * The stream's zlib header (RFC 1950), checked as inflate() would: deflate,
 * a window of at most 32 KiB, the check bits, and with FDICT the SPDY/3
 * dictionary's id (another dictionary is an error, as with zlib). Sets up
 * the history, dictionary first. Returns the header's length or an error.
 */
static int read_zlib_header(lc_spdy_inflater *z, const uint8_t *p, size_t n)
{
    if (n < 2)
        return LC__SPDY_EHBLOCK; /* no room left for a single pair */
    unsigned cmf = p[0], flg = p[1];
    if ((cmf & 0x0f) != 8 || (cmf >> 4) > 7 || ((cmf << 8) | flg) % 31 != 0)
        return LC__SPDY_EZLIB;
    bool fdict = (flg & 0x20) != 0;
    if (fdict && n < 6)
        return LC__SPDY_EHBLOCK;
    if (fdict && get32(p + 2) != LC_SPDY_DICTIONARY_ADLER)
        return LC__SPDY_EZLIB;
    z->hist = malloc(HIST_SIZE);
    if (z->hist == NULL)
        return LC_ENOMEM;
    z->hist_total = 0;
    if (fdict)
        hist_put(z, (const uint8_t *)lc__spdy_dictionary, lc__spdy_dictionary_len);
    return fdict ? 6 : 2;
}

/* Hands the stream to zlib (raw inflate) with the history as dictionary. */
static int zlib_take_over(lc_spdy_inflater *z)
{
    memset(&z->zs, 0, sizeof z->zs);
    if (inflateInit2(&z->zs, -15) != Z_OK)
        return LC_ENOMEM;
    z->zlib = true;
    size_t have = z->hist_total < HIST_SIZE ? (size_t)z->hist_total : HIST_SIZE;
    size_t at = (size_t)(z->hist_total % HIST_SIZE);
    uint8_t *dict = z->hist;
    if (have == HIST_SIZE && at != 0) {
        /* the ring wrapped: oldest byte first */
        dict = malloc(HIST_SIZE);
        if (dict == NULL)
            return LC_ENOMEM;
        memcpy(dict, z->hist + at, HIST_SIZE - at);
        memcpy(dict + HIST_SIZE - at, z->hist, at);
    }
    int r = have ? inflateSetDictionary(&z->zs, dict, (uInt)have) : Z_OK;
    if (dict != z->hist)
        free(dict);
    free(z->hist);
    z->hist = NULL;
    return r == Z_OK ? 0 : LC__SPDY_EZLIB;
}

/* Copies out the whole stored blocks at p (BFINAL 0, BTYPE 00: the padding
 * bits are ignored, as zlib does) until one is not. Returns the bytes
 * taken, or LC__SPDY_EHBLOCK_SIZE past cap. */
static ptrdiff_t stored_run(lc_spdy_inflater *z, size_t cap, const uint8_t *p, size_t n)
{
    size_t at = 0;
    while (n - at >= 5 && (p[at] & 7) == 0) {
        size_t len = p[at + 1] | (size_t)p[at + 2] << 8;
        size_t nlen = p[at + 3] | (size_t)p[at + 4] << 8;
        if ((len ^ 0xffff) != nlen || len > n - at - 5)
            break; /* zlib says what is wrong, or waits for the rest */
        if (len >= cap - z->out.len)
            return LC__SPDY_EHBLOCK_SIZE;
        if (lc__buf_append(&z->out, p + at + 5, len) != 0)
            return LC_ENOMEM;
        at += 5 + len;
    }
    return (ptrdiff_t)at;
}

/* zlib inflates p[0..n) onto z->out, within cap bytes of output. */
static int zlib_run(lc_spdy_inflater *z, size_t cap, const uint8_t *p, size_t n)
{
    if (n > UINT32_MAX) /* uInt; frames are < 2^24 anyway */
        return LC__SPDY_EHBLOCK_SIZE;
    z->zs.next_in = (Bytef *)(uintptr_t)p; /* zlib does not write its input */
    z->zs.avail_in = (uInt)n;
    for (;;) {
        if (z->out.len == cap)
            return LC__SPDY_EHBLOCK_SIZE;
        if (z->out.cap == z->out.len) {
            size_t grow = z->out.cap < 256 ? 256 : z->out.cap;
            if (grow > cap - z->out.len)
                grow = cap - z->out.len;
            if (lc__buf_reserve(&z->out, grow) != 0)
                return LC_ENOMEM;
        }
        size_t room = z->out.cap - z->out.len;
        if (room > cap - z->out.len)
            room = cap - z->out.len;
        z->zs.next_out = z->out.data + z->out.len;
        if (room > UINT32_MAX)
            room = UINT32_MAX; /* (avail_out is 32 bits: 4 GiB would read as 0) */
        z->zs.avail_out = (uInt)room;
        int r = inflate(&z->zs, Z_SYNC_FLUSH);
        z->out.len += room - z->zs.avail_out;
        if (r == Z_OK || r == Z_BUF_ERROR) {
            /* Z_BUF_ERROR: no progress was possible; with input left that
             * can only be for want of output room, handled above. */
            if (z->zs.avail_in == 0 && z->zs.avail_out != 0)
                return 0; /* all input taken and all output flushed */
            if (r == Z_BUF_ERROR && z->zs.avail_out != 0)
                return LC__SPDY_EZLIB;
            continue;
        }
        if (r == Z_MEM_ERROR)
            return LC_ENOMEM;
        /* Z_STREAM_END (the peer ended the stream every later block needs),
         * Z_DATA_ERROR, Z_STREAM_ERROR */
        return LC__SPDY_EZLIB;
    }
}

int lc__spdy_inflate_block(lc_spdy_inflater *z, const lc_spdy_limits *lim,
                           const uint8_t *p, size_t n,
                           const lc_spdy_header **pairs, size_t *npairs)
{
    lc_spdy_limits l;
    lc__spdy_limits_resolve(&l, lim);
    if (z->state < 0)
        return z->state;
    if (z->state == 0) {
        int h = read_zlib_header(z, p, n);
        if (h == LC_ENOMEM)
            return h; /* nothing read: a later block may retry */
        if (h < 0)
            return inflate_fail(z, h);
        p += h;
        n -= (size_t)h;
        z->state = 1;
    }
    /* The cap: output may reach max_header_block + 1 bytes, one byte more
     * than allowed, which proves the block too large without storing more. */
    const size_t cap = (size_t)l.max_header_block + 1;
    z->out.len = 0;
    if (!z->zlib) {
        ptrdiff_t took = stored_run(z, cap, p, n);
        if (took < 0)
            return inflate_fail(z, (int)took);
        hist_put(z, z->out.data, z->out.len);
        p += took;
        n -= (size_t)took;
        if (n > 0) {
            int r = zlib_take_over(z);
            if (r < 0)
                return inflate_fail(z, r);
        }
    }
    if (z->zlib && n > 0) {
        int r = zlib_run(z, cap, p, n);
        if (r < 0)
            return inflate_fail(z, r);
    }
    size_t count = 0;
    int r = parse_block(z, l.max_header_pairs, &count);
    if (r < 0)
        return inflate_fail(z, r);
    *pairs = z->pairs;
    *npairs = count;
    return 0;
}

/* ---- deflater ------------------------------------------------------------ */

void lc__spdy_deflater_init(lc_spdy_deflater *z, int level)
{
    memset(z, 0, sizeof *z);
    z->level = level;
    lc__buf_init(&z->raw);
}

void lc__spdy_deflater_free(lc_spdy_deflater *z)
{
    if (z->zs.state != Z_NULL) /* zlib set up (level 0 never sets it up) */
        deflateEnd(&z->zs);
    lc__buf_free(&z->raw);
    free(z->dup_tab);
    memset(z, 0, sizeof *z);
}

/*
 * Level 0, written here rather than by deflate(): each block goes out as
 * stored deflate blocks (at most 65535 bytes each) followed by the empty
 * stored block of a sync flush, the first one behind the zlib header and the
 * dictionary's id. The bytes are exactly zlib's (1.2.9 and later) at level 0
 * with our window and memLevel (tests/spdy: test_level0_matches_zlib;
 * older zlib cut shorter stored blocks), and a libchan block
 * is serialized straight into them: bench/bench_spdy measures both in one
 * run, 35 ns per block here against 90 ns for the raw block and deflate()
 * (two blocks lie on a fresh reply channel's round trip). Stored blocks
 * never refer back to the window, so nothing else of zlib's state is
 * needed.
 */
static int stored_blocks(lc_spdy_deflater *z, lc_buf *out, const lc_spdy_header *h, size_t np)
{
    size_t n = raw_size(h, np);
    if (n == 0)
        return LC_EINVAL;
    const uint8_t *src = NULL;
    if (n > 65535) {
        /* several stored blocks: the raw form first (a libchan block is
         * one, written in place below) */
        z->raw.len = 0;
        int r = build_checked(&z->raw, h, np);
        if (r < 0)
            return r;
        src = z->raw.data;
    }
    size_t nblk = (n + 65534) / 65535;
    size_t need = (z->state == 0 ? 6 : 0) + nblk * 5 + n + 5;
    if (lc__buf_reserve(out, need) != 0)
        return LC_ENOMEM;
    uint8_t *p = out->data + out->len;
    if (z->state == 0) {
        /* CMF: deflate with a 2^WBITS window; FLG: level 0 (FLEVEL 0),
         * FDICT, FCHECK making the pair a multiple of 31 (RFC 1950) */
        unsigned hdr = ((8u + ((LC_SPDY_DEFLATE_WBITS - 8u) << 4)) << 8) | 0x20u;
        hdr += 31 - hdr % 31;
        *p++ = (uint8_t)(hdr >> 8);
        *p++ = (uint8_t)hdr;
        lc__spdy_put32(p, LC_SPDY_DICTIONARY_ADLER); /* DICTID */
        p += 4;
        z->state = 1; /* (zlib itself is never set up: zs stays zeroed) */
    }
    size_t left = n;
    do {
        size_t len = left < 65535 ? left : 65535;
        p[0] = 0; /* BFINAL 0, BTYPE 00 (stored), then padding: all zero bits */
        p[1] = (uint8_t)len;
        p[2] = (uint8_t)(len >> 8);
        p[3] = (uint8_t)~len;
        p[4] = (uint8_t)(~len >> 8);
        if (src == NULL)
            raw_write(p + 5, h, np); /* the whole block: len == n */
        else
            memcpy(p + 5, src, len);
        p += 5 + len;
        if (src != NULL)
            src += len;
        left -= len;
    } while (left > 0);
    memcpy(p, "\x00\x00\x00\xff\xff", 5); /* the sync flush: an empty stored block */
    p += 5;
    out->len = (size_t)(p - out->data);
    return 0;
}

size_t lc__spdy_deflate_bound(const lc_spdy_deflater *z, const lc_spdy_header *h, size_t n)
{
    size_t raw = raw_size(h, n);
    if (raw == 0)
        return 0;
    if (z->level == 0) /* what stored_blocks writes */
        return (z->state == 0 ? 6 : 0) + (raw + 65534) / 65535 * 5 + raw + 5;
    /* zlib's worst case (deflateBound's form), the zlib header with DICTID,
     * and the sync flush's empty stored block, with margin */
    return raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13 + 6 + 5 + 16;
}

int lc__spdy_deflate_block(lc_spdy_deflater *z, lc_buf *out, const lc_spdy_header *h, size_t n)
{
    if (z->state < 0)
        return LC__SPDY_EBROKEN;
    int r = encoder_check(h, n, &z->dup_tab, &z->dup_cap);
    if (r < 0)
        return r;
    if (z->level == 0)
        return stored_blocks(z, out, h, n);
    z->raw.len = 0;
    if ((r = build_checked(&z->raw, h, n)) < 0)
        return r;
    if (z->state == 0) {
        z->zs.zalloc = Z_NULL;
        z->zs.zfree = Z_NULL;
        z->zs.opaque = Z_NULL;
        if (deflateInit2(&z->zs, z->level, Z_DEFLATED, LC_SPDY_DEFLATE_WBITS,
                         LC_SPDY_DEFLATE_MEMLEVEL, Z_DEFAULT_STRATEGY) != Z_OK)
            return LC_ENOMEM; /* e.g. a bad level: nothing set up, not sticky */
        if (deflateSetDictionary(&z->zs, lc__spdy_dictionary,
                                 (uInt)lc__spdy_dictionary_len) != Z_OK) {
            deflateEnd(&z->zs);
            return LC_ENOMEM;
        }
        z->state = 1;
    }
    if (z->raw.len > UINT32_MAX)
        return LC_EINVAL;

    /* Room for the whole block first, so that the usual block is one
     * deflate() call; the bound covers the zlib header and the sync-flush
     * marker (an empty stored block, 5 bytes) with margin. */
    size_t start = out->len;
    size_t bound = deflateBound(&z->zs, (uLong)z->raw.len) + 16;
    if (lc__buf_reserve(out, bound) != 0)
        return LC_ENOMEM; /* zlib not touched yet */
    z->zs.next_in = z->raw.data;
    z->zs.avail_in = (uInt)z->raw.len;
    for (;;) {
        size_t room = out->cap - out->len;
        if (room > UINT32_MAX)
            room = UINT32_MAX;
        z->zs.next_out = out->data + out->len;
        z->zs.avail_out = (uInt)room;
        r = deflate(&z->zs, Z_SYNC_FLUSH);
        out->len += room - z->zs.avail_out;
        if (r != Z_OK && r != Z_BUF_ERROR)
            break;
        if (z->zs.avail_out != 0 && z->zs.avail_in == 0)
            return 0; /* flushed completely */
        if (lc__buf_reserve(out, out->cap) != 0)
            break;
    }
    /* Part of the block went into the stream and is lost: the peer's
     * inflater can never follow again. */
    out->len = start;
    z->state = LC__SPDY_EBROKEN;
    return LC__SPDY_EBROKEN;
}
