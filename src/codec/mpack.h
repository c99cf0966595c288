/*
 * mpack.h - msgpack-c's packer over lc_buf, for every writer of msgpack in
 * the library (the tree encoder in encode.c, lc_pack's direct writer in
 * src/msg/pack.c): one set of primitives, so both write the same bytes for
 * the same values. Private to the library.
 */
#ifndef LC_CODEC_MPACK_H
#define LC_CODEC_MPACK_H

#include "codec/codec.h"

#include <string.h>

/*
 * msgpack-c's packer, instantiated over lc_buf. msgpack-c writes its packer
 * as a template (msgpack/pack_template.h, parameterised by the user type and
 * the append operation); <msgpack.h> instantiates it with a write callback
 * that is called through a function pointer for every header and body
 * (bench_msgpack measured 29 ns to encode a SimpleStruct that way, 3x a plain
 * byte writer). Instantiated here with an inline append instead, the same
 * msgpack-c code writes straight into the buffer. The functions are named
 * lc__mp_<what> (lc__mp_int64, lc__mp_str, ...) and return 0 or -1 (no memory).
 */
static inline int mp_append(lc_buf *b, const void *p, size_t n)
{
    if (b->cap - b->len < n && lc__buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

#include <msgpack/pack_define.h>
#include <msgpack/timestamp.h>
#define msgpack_pack_inline_func(name) static inline int lc__mp ## name
#define msgpack_pack_user lc_buf *
#define msgpack_pack_append_buffer(user, buf, len) return mp_append(user, buf, len)
#define msgpack_pack_ext lc__mp_ext /* the template's own call in _timestamp */
#include <msgpack/pack_template.h>
#undef msgpack_pack_ext

/* A time (ext 6) as both writers write it: c7 0c 06 (12 is no fixext size),
 * big-endian seconds, then nanoseconds (the caller checked them < 1e9). */
static inline int lc__mp_time(lc_buf *b, int64_t sec, uint32_t nsec)
{
    uint8_t t[12];
    uint64_t be_sec = __builtin_bswap64((uint64_t)sec);
    uint32_t be_nsec = __builtin_bswap32(nsec);
    memcpy(t, &be_sec, 8);
    memcpy(t + 8, &be_nsec, 4);
    if (lc__mp_ext(b, 12, LC_EXT_TIME) != 0)
        return -1;
    return lc__mp_ext_body(b, t, 12);
}

#endif
