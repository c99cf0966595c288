/*
 * codec.h - the msgpack codec (src/codec): message value trees <-> bytes, as
 * PROTOCOL.md section 4 says. Internal API used by the public wrappers
 * (lc_msgpack_*) and by the session layer, which resolves attachments through
 * hooks. Sans-I/O: bytes in, messages out. Never installed.
 *
 * Wire forms produced (what msgpack-c's packer emits, the "smallest form"):
 *   nil c0, false c2, true c3, integers as positive/negative fixint,
 *   uint8..64 (cc..cf) for positive, int8..64 (d0..d3) for negative values,
 *   doubles as float64 (cb), strings fixstr/str8/16/32, binary bin8/16/32,
 *   arrays and maps with their smallest header.
 *   Ext 1..5: reference ids, fixext 4 (d6 TT + 4 bytes BE) when the id fits in
 *   32 bits, else fixext 8 (d7 TT + 8 bytes BE). Ext 6: time, ext8 with 12
 *   bytes (c7 0c 06 + 8-byte BE signed seconds + 4-byte BE nanoseconds).
 *   Ext 7 (ours, not in the Go implementation): an opaque body, see below.
 */
#ifndef LC_CODEC_H
#define LC_CODEC_H

#include "msg/msg_internal.h"

#include <stddef.h>
#include <stdint.h>

/* ---- growable output buffer ---------------------------------------------- */

typedef struct lc_buf {
    uint8_t *data;
    size_t len, cap;
} lc_buf;

void lc__buf_init(lc_buf *b);
void lc__buf_free(lc_buf *b);
/* Makes room for at least `extra` more bytes after len. 0 or LC_ENOMEM. */
int lc__buf_reserve(lc_buf *b, size_t extra);
/* Appends n bytes. 0 or LC_ENOMEM. */
int lc__buf_append(lc_buf *b, const void *p, size_t n);

/* ---- wire extension types ------------------------------------------------ */

enum {
    LC_EXT_DUPLEX   = 1, /* byte stream the receiver reads and writes */
    LC_EXT_WRITE    = 2, /* byte stream the receiver writes (LC_STREAM_WRITE) */
    LC_EXT_READ     = 3, /* byte stream the receiver reads (LC_STREAM_READ) */
    LC_EXT_SENDER   = 4, /* a Sender for the receiver of the message */
    LC_EXT_RECEIVER = 5, /* a Receiver for the receiver of the message */
    LC_EXT_TIME     = 6, /* 8-byte BE seconds + 4-byte BE nanoseconds */
    LC_EXT_BODY     = 7  /* ours: opaque body, see lc__encode */
};

/* The ext type an attachment value travels as: LC_SENDER 4, LC_RECEIVER 5,
 * LC_STREAM duplex 1 / write 2 / read 3, LC__REF its recorded type; 0 for any
 * other value. */
uint8_t lc__codec_ext_for(const lc_value *v);

/*
 * Attachment hooks, supplied by the session layer.
 *
 * encode_attachment is called for every LC_SENDER / LC_RECEIVER / LC_STREAM
 * value met while encoding (in document order, body attachments in list
 * order). It opens a sub-stream (or whatever it needs) and returns the ext
 * type (1..5, normally lc__codec_ext_for(v)) and the reference id to write.
 * A negative return aborts the encoding with that code.
 *
 * decode_attachment is called for every ext 1..5 met while decoding. It
 * creates the value in m (lc_new_sender/receiver/stream, or anything else
 * allocated in m) and stores it in *out; a negative return aborts the
 * decoding with that code (m is then freed, releasing what was created).
 *
 * Either pointer may be NULL. Without encode_attachment, attachments fail with
 * LC_ENOTSUP. Without decode_attachment, ext 1..5 become LC__REF values
 * (mode = ext type, u.ref = id), which encode back to the same bytes.
 */
struct lc_codec_hooks {
    void *ctx;
    int (*encode_attachment)(void *ctx, lc_value *v, uint8_t *ext_type, uint64_t *ref);
    int (*decode_attachment)(void *ctx, uint8_t ext_type, uint64_t ref, lc_msg *m, lc_value **out);
};

/* ---- encoder ------------------------------------------------------------- */

/*
 * Appends the encoding of m to out. hooks may be NULL. On failure out->len is
 * restored (nothing partial is left) and the code is returned: LC_ENOTSUP
 * (attachment without hooks), LC_ETAKEN (attachment already taken out),
 * LC_EDEPTH (nesting deeper than LC_ENCODE_MAX_DEPTH: a cyclic tree),
 * LC_EINVAL, LC_ENOMEM, or a hook's error.
 *
 * A message with an opaque body (lc_msg_body() != NULL) is encoded as ext 7
 * (ours) whose payload is the msgpack array
 *     [content-type (str), body (bin), [attachment ext 1..5, ...]]
 * with the attachments in lc_msg_attachment() order.
 */
#define LC_ENCODE_MAX_DEPTH 4096
int lc__encode(const lc_msg *m, lc_buf *out, const struct lc_codec_hooks *hooks);

/* ---- decoder ------------------------------------------------------------- */

/* Fills in the defaults for NULL limits or zero fields, and caps max_depth
 * at LC_ENCODE_MAX_DEPTH (the depth every walk over a value tree handles). */
void lc__limits_resolve(lc_limits *dst, const lc_limits *src);

/*
 * Decodes one message from the complete, contiguous buffer p[0..n).
 * lim may be NULL (defaults; zero fields mean their default), hooks may be
 * NULL (ext 1..5 become LC__REF values).
 *
 * consumed == NULL: p must hold exactly one message; bytes after it fail with
 * LC_ETRAILING. consumed != NULL: p starts with a message, *consumed gets its
 * length and the rest is not looked at.
 *
 * Errors (m is not returned; *out = NULL): LC_ETRUNCATED (input ends inside a
 * value), LC_ETRAILING, LC_EDEPTH (arrays/maps nested deeper than max_depth;
 * the root container is depth 1), LC_ETOOBIG (an array/map over max_elements
 * entries, or a value that would end beyond max_message bytes from the start
 * of the message; checked on the header, before anything is allocated),
 * LC_EBADMSG (reserved byte 0xc1, an ext type other than 1..7, ext 1..5 not 4
 * or 8 bytes, ext 6 not 12 bytes or nanoseconds >= 1e9, ext 7 not at the top
 * or with a malformed payload), LC_ENOMEM, or a hook's error.
 * Non-negative integers decode to LC_INT unless above INT64_MAX (LC_UINT),
 * float32 to LC_DOUBLE, map keys may be of any type.
 */
int lc__decode(const uint8_t *p, size_t n, const lc_limits *lim,
               const struct lc_codec_hooks *hooks, lc_msg **out, size_t *consumed);

/* ---- streaming decoder --------------------------------------------------- */

/*
 * Decodes a continuous byte stream of messages (the DATA payloads of one
 * channel) delivered in chunks split anywhere. feed() copies the bytes;
 * next() returns the next complete message. The work is linear in the input:
 * a resumable scanner finds each message's end by tracking the remaining
 * element count per nesting level (never rescanning), then lc__decode runs
 * once on the complete message. The buffered bytes of one message are bounded
 * by max_message (+ one chunk): limits are checked by the scanner as headers
 * arrive.
 *
 *   lc__sd_next() returns 0 and *out = a message (the caller owns it),
 *   LC__SD_AGAIN (a positive value) when no complete message is buffered yet,
 *   or a negative error. Errors are sticky: every later feed/next/finish
 *   returns the same code (the stream is unusable; the session resets it).
 *   The error code for bad input is the one lc__decode gives for the same
 *   bytes, reported as soon as the bytes up to the fault have arrived (the
 *   exception: where lc__decode, given a buffer that ends early, can already
 *   tell it is truncated - an array header counting more elements than bytes
 *   remain - the stream scans on and may find a later error).
 *   lc__sd_finish() is called at end of stream (FIN): 0 if nothing is
 *   buffered, LC_ETRUNCATED (sticky) if the bytes of a partial message
 *   remain, LC__SD_AGAIN if a complete message is still to be taken with
 *   next(), or the sticky error.
 */
#define LC__SD_AGAIN 1

typedef struct lc_stream_decoder {
    lc_limits lim;
    struct lc_codec_hooks hooks;
    int has_hooks;
    int err;            /* sticky error, 0 while healthy */
    lc_buf in;          /* buffered input; the current message starts at `start` */
    size_t start;       /* offset of the current message in `in` */
    size_t scan;        /* offset of the next header to scan (may be > in.len
                           while a string/bin/ext payload is still arriving) */
    int done;           /* the scanner has found the end of the current message */
    int time_pending;   /* a time ext's nanoseconds at time_at are unchecked */
    size_t time_at;
    uint32_t depth;     /* open containers of the current message */
    uint32_t stack_cap;
    uint64_t *left;     /* left[i]: elements still to come at nesting level i:
                           `shallow` until a message nests deeper (a decoder
                           is never copied or moved once fed) */
    uint64_t shallow[4];
} lc_stream_decoder;

void lc__sd_init(lc_stream_decoder *d, const lc_limits *lim, const struct lc_codec_hooks *hooks);
void lc__sd_free(lc_stream_decoder *d);
int lc__sd_feed(lc_stream_decoder *d, const void *p, size_t n);
int lc__sd_next(lc_stream_decoder *d, lc_msg **out);
/* What feed(*p, *n) then next() would give, without the copy, while nothing
 * is buffered: the next message decoded straight from the caller's bytes,
 * which advance past it. LC__SD_AGAIN when bytes are buffered, or *p holds no
 * complete message: the caller then feeds the rest. An error is sticky as
 * next()'s, and the bytes from the faulty message on are buffered, as fed
 * bytes would be (lc__sd_rest: the skimmer reads them). */
int lc__sd_next_direct(lc_stream_decoder *d, const uint8_t **p, size_t *n, lc_msg **out);
int lc__sd_finish(lc_stream_decoder *d);

/* Healthy, with no byte buffered: next() and finish() have nothing to say. */
static inline bool lc__sd_idle(const lc_stream_decoder *d)
{
    return d->err == 0 && d->start == d->in.len;
}

/* The bytes of the current (refused or unfinished) message and all that is
 * buffered after it: where a skimmer takes over once next() failed. */
static inline const uint8_t *lc__sd_rest(const lc_stream_decoder *d, size_t *n)
{
    *n = d->in.len > d->start ? d->in.len - d->start : 0;
    return d->in.data + d->start;
}

/*
 * Skimmer (skim.c): walks msgpack bytes that will not be decoded, chunk by
 * chunk split anywhere, and reports every passed-fd reference in them (ext
 * 1/2/3 with an 8-byte payload whose top bit is set: found() gets the fd's
 * number without that bit), and, when found_ref is set, every sub-stream
 * reference (ext 1..5 without that bit: found_ref gets the ref and the ext
 * type that names it, with the same ctx). Structure only: no limits, nothing buffered but
 * a cut header and the nesting stack. feed() returns 0, or LC_EBADMSG once
 * bytes that are not msgpack (or nesting deeper than 4096) ended the walk.
 */
typedef void (*lc_skim_found_fn)(void *ctx, uint64_t fd_number);
typedef void (*lc_skim_ref_fn)(void *ctx, uint64_t ref, uint8_t ext);
typedef struct lc_skim {
    uint64_t skip;   /* payload bytes still to pass over */
    uint8_t hdr[17]; /* a header (with a stream ext's payload) cut by a chunk's end */
    uint8_t have;
    int dead;
    uint32_t depth, cap;
    uint64_t *left;  /* left[i]: elements still to come at nesting level i */
    lc_skim_ref_fn found_ref; /* NULL after lc__skim_init */
} lc_skim;

void lc__skim_init(lc_skim *k);
void lc__skim_free(lc_skim *k);
int lc__skim_feed(lc_skim *k, const uint8_t *p, size_t n, lc_skim_found_fn found, void *ctx);

#endif
