/*
 * spdy.h - SPDY/3 framing (src/spdy), as PROTOCOL.md section 2 says: a
 * sans-I/O frame decoder (bytes in, frames out), frame encoders that append
 * to an lc_buf, and the per-direction zlib contexts of the header blocks.
 * The session layer sits on top; nothing here touches a socket, a clock or a
 * lock. Every object here is used by one thread at a time. Never installed.
 *
 * Wire summary (big-endian):
 *   control: |1| version(15)=3 | type(16) | flags(8) | length(24) | payload
 *   data:    |0| stream-id(31)            | flags(8) | length(24) | payload
 */
#ifndef LC_SPDY_H
#define LC_SPDY_H

#include "codec/codec.h" /* lc_buf */

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

/* ---- constants ----------------------------------------------------------- */

#define LC_SPDY_VERSION       3
#define LC_SPDY_HEADER_LEN    8           /* bytes of every frame header */
#define LC_SPDY_MAX_LENGTH    0xffffffu   /* 2^24 - 1: the length field's maximum */
#define LC_SPDY_MAX_STREAM_ID 0x7fffffffu /* 31 bits */

/* Frame types. Control types keep their wire number; DATA is 0 (no control
 * frame has type 0 on the wire, one that does is LC_SPDY_UNKNOWN). */
enum lc_spdy_type {
    LC_SPDY_DATA          = 0,
    LC_SPDY_SYN_STREAM    = 1,
    LC_SPDY_SYN_REPLY     = 2,
    LC_SPDY_RST_STREAM    = 3,
    LC_SPDY_SETTINGS      = 4,
    LC_SPDY_PING          = 6,
    LC_SPDY_GOAWAY        = 7,
    LC_SPDY_HEADERS       = 8,
    LC_SPDY_WINDOW_UPDATE = 9,
    LC_SPDY_UNKNOWN       = 0x10000 /* any other control type (5 NOOP, 10 CREDENTIAL, ...) */
};

/* Frame flags. */
#define LC_SPDY_FLAG_FIN            0x01 /* DATA, SYN_STREAM, SYN_REPLY, HEADERS */
#define LC_SPDY_FLAG_UNIDIRECTIONAL 0x02 /* SYN_STREAM */
#define LC_SPDY_FLAG_CLEAR_SETTINGS 0x01 /* SETTINGS */

/* SETTINGS entry flags and ids (SPDY/3 section 2.6.4). */
#define LC_SPDY_SETTINGS_PERSIST_VALUE 0x01
#define LC_SPDY_SETTINGS_PERSISTED     0x02
enum lc_spdy_setting_id {
    LC_SPDY_SETTINGS_UPLOAD_BANDWIDTH       = 1,
    LC_SPDY_SETTINGS_DOWNLOAD_BANDWIDTH     = 2,
    LC_SPDY_SETTINGS_ROUND_TRIP_TIME        = 3,
    LC_SPDY_SETTINGS_MAX_CONCURRENT_STREAMS = 4,
    LC_SPDY_SETTINGS_CURRENT_CWND           = 5,
    LC_SPDY_SETTINGS_DOWNLOAD_RETRANS_RATE  = 6,
    LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE    = 7,
    LC_SPDY_SETTINGS_CLIENT_CERT_VECTOR     = 8
};

/* RST_STREAM status codes. */
enum lc_spdy_rst_status {
    LC_SPDY_PROTOCOL_ERROR        = 1,
    LC_SPDY_INVALID_STREAM        = 2,
    LC_SPDY_REFUSED_STREAM        = 3,
    LC_SPDY_UNSUPPORTED_VERSION   = 4,
    LC_SPDY_CANCEL                = 5,
    LC_SPDY_INTERNAL_ERROR        = 6,
    LC_SPDY_FLOW_CONTROL_ERROR    = 7,
    LC_SPDY_STREAM_IN_USE         = 8,
    LC_SPDY_STREAM_ALREADY_CLOSED = 9,
    LC_SPDY_INVALID_CREDENTIALS   = 10,
    LC_SPDY_FRAME_TOO_LARGE       = 11
};

/* GOAWAY status codes. */
enum lc_spdy_goaway_status {
    LC_SPDY_GOAWAY_OK             = 0,
    LC_SPDY_GOAWAY_PROTOCOL_ERROR = 1,
    LC_SPDY_GOAWAY_INTERNAL_ERROR = 2
};

/*
 * Errors of this layer. Internal codes (no public LC_E* fits them yet); the
 * session maps every one of them to "malformed peer input": GOAWAY
 * PROTOCOL_ERROR and close (PROTOCOL.md section 6). All decoder errors are
 * fatal for the session: the framing (or the shared zlib stream) cannot be
 * resynchronised after them. lc__spdy_strerror() names them.
 * Besides these, calls return LC_ENOMEM and (encoders, bad arguments) LC_EINVAL.
 */
enum lc_spdy_error {
    LC__SPDY_EVERSION       = -1101, /* control frame with a version other than 3 */
    LC__SPDY_EFRAME_SIZE    = -1102, /* frame length over max_frame (control: max_control_frame) */
    LC__SPDY_ELEN_SYN_STREAM   = -1103, /* SYN_STREAM payload < 10 bytes */
    LC__SPDY_ELEN_SYN_REPLY    = -1104, /* SYN_REPLY payload < 4 bytes */
    LC__SPDY_ELEN_RST_STREAM   = -1105, /* RST_STREAM payload != 8 bytes */
    LC__SPDY_ELEN_SETTINGS     = -1106, /* SETTINGS payload != 4 + 8 * count */
    LC__SPDY_ELEN_PING         = -1107, /* PING payload != 4 bytes */
    LC__SPDY_ELEN_GOAWAY       = -1108, /* GOAWAY payload != 8 bytes */
    LC__SPDY_ELEN_HEADERS      = -1109, /* HEADERS payload < 4 bytes */
    LC__SPDY_ELEN_WINDOW_UPDATE = -1110, /* WINDOW_UPDATE payload != 8 bytes */
    LC__SPDY_ESTREAM_ZERO   = -1111, /* stream id 0 on DATA, SYN_STREAM, SYN_REPLY,
                                        RST_STREAM or HEADERS */
    LC__SPDY_EZLIB          = -1112, /* header block: corrupt zlib data, another
                                        dictionary, or a zlib stream that ended */
    LC__SPDY_EHBLOCK_SIZE   = -1113, /* header block inflates to more than max_header_block */
    LC__SPDY_EHBLOCK        = -1114, /* header block structure: a count or a length runs
                                        past the end, or bytes follow the last pair */
    LC__SPDY_EHPAIRS        = -1115, /* header block with more than max_header_pairs pairs */
    LC__SPDY_EHUPPER        = -1116, /* header name with an upper-case letter */
    LC__SPDY_EHDUP          = -1117, /* the same header name twice in one block */
    LC__SPDY_EHNAME         = -1118, /* empty header name */
    LC__SPDY_EBROKEN        = -1119  /* encoder: the deflate context failed earlier (out of
                                        memory mid-block); the session must be closed */
};

/* A static description of an LC__SPDY_E* code (lc_strerror() for others). */
const char *lc__spdy_strerror(int code);

/* ---- limits -------------------------------------------------------------- */

/*
 * Decoder limits. A zero field means its default. Every limit is checked
 * before the bytes it bounds are stored: a frame header with a too large
 * length fails at once, inflation stops at max_header_block + 1 bytes.
 */
typedef struct lc_spdy_limits {
    uint32_t max_frame;         /* payload bytes of any frame; default (and ceiling)
                                   2^24 - 1, the format's maximum */
    uint32_t max_control_frame; /* payload bytes of a known control frame, which is
                                   buffered whole when it arrives split; default 256 KiB
                                   (never above max_frame) */
    uint32_t max_header_block;  /* inflated bytes of one header block; default 64 KiB */
    uint32_t max_header_pairs;  /* name/value pairs in one header block; default 256 */
} lc_spdy_limits;

#define LC_SPDY_DEFAULT_MAX_FRAME         LC_SPDY_MAX_LENGTH
#define LC_SPDY_DEFAULT_MAX_CONTROL_FRAME (256u * 1024u)
#define LC_SPDY_DEFAULT_MAX_HEADER_BLOCK  (64u * 1024u)
#define LC_SPDY_DEFAULT_MAX_HEADER_PAIRS  256u

/* *dst = src with zero fields replaced by their defaults (src may be NULL). */
void lc__spdy_limits_resolve(lc_spdy_limits *dst, const lc_spdy_limits *src);

/* ---- header blocks ------------------------------------------------------- */

/* The SPDY/3 zlib dictionary (dictionary.c), and its adler32 (the DICTID of
 * every header stream's zlib header). */
extern const uint8_t lc__spdy_dictionary[];
extern const size_t lc__spdy_dictionary_len; /* 1423 */
#define LC_SPDY_DICTIONARY_ADLER 0xe3c6a7c2u

/* One name/value pair. Not NUL-terminated. A value may hold several values
 * separated by NUL bytes (SPDY/3); this layer passes it through as is. */
typedef struct lc_spdy_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} lc_spdy_header;

/* The pair named name (NUL-terminated) in h[0..n), or NULL. */
const lc_spdy_header *lc__spdy_header_find(const lc_spdy_header *h, size_t n, const char *name);

/*
 * Rules for a block's pairs, on both sides: names are non-empty and have no
 * upper-case ASCII letter; a name appears once per block (duplicates are
 * rejected, as the SPDY/3 draft and Go's spdystream do: the draft's way to
 * carry several values is one value with NUL separators). Values are opaque.
 */

/*
 * Appends the uncompressed form of h[0..n) to out: 32-bit pair count, then
 * per pair 32-bit length + name, 32-bit length + value. Checks the rules
 * above (LC_EINVAL) and the 32-bit fields; LC_ENOMEM. out->len is restored
 * on failure.
 */
int lc__spdy_hblock_build(lc_buf *out, const lc_spdy_header *h, size_t n);

/*
 * The receiving zlib context of one session direction. The pairs of the last
 * decoded block point into its scratch buffer: they are valid until the next
 * block is inflated (or the context is freed). Stored deflate blocks (what
 * our sessions send) are read here without zlib; zlib takes over, with the
 * output so far as its dictionary, at the first block of another kind.
 */
typedef struct lc_spdy_inflater {
    z_stream zs;
    int state;               /* 0: nothing read yet, 1: ready, < 0: failed (sticky) */
    bool zlib;               /* zs is set up (inflateEnd owed) */
    uint8_t *hist;           /* until then: the last 32 KiB of the stream's
                                output, dictionary first (a ring) */
    uint64_t hist_total;     /* bytes ever put into hist */
    lc_buf out;              /* the last inflated block */
    lc_spdy_header *pairs;
    size_t pairs_cap;
    uint32_t *dup_tab;       /* duplicate-name check of large blocks */
    size_t dup_cap;
} lc_spdy_inflater;

/* No allocation: zlib is set up at the first block. */
void lc__spdy_inflater_init(lc_spdy_inflater *z);
void lc__spdy_inflater_free(lc_spdy_inflater *z);

/*
 * Inflates one compressed header block p[0..n) (the rest of a SYN_STREAM,
 * SYN_REPLY or HEADERS payload) in the session's stream and parses it.
 * lim may be NULL (defaults). On success *pairs / *npairs describe the block
 * (valid as said above). Errors: LC__SPDY_EZLIB, LC__SPDY_EHBLOCK_SIZE,
 * LC__SPDY_EHBLOCK, LC__SPDY_EHPAIRS, LC__SPDY_EHUPPER, LC__SPDY_EHDUP,
 * LC__SPDY_EHNAME, LC_ENOMEM. Every error is sticky: the stream state is lost;
 * except LC_ENOMEM before anything of the first block was read (its zlib
 * header): nothing was consumed, and a later call may try again.
 */
int lc__spdy_inflate_block(lc_spdy_inflater *z, const lc_spdy_limits *lim,
                           const uint8_t *p, size_t n,
                           const lc_spdy_header **pairs, size_t *npairs);

/*
 * The sending zlib context of one session direction. Its window is 4 KiB
 * (the dictionary and the last few blocks) and memLevel 6: about 50 KiB per
 * session instead of zlib's default 256 KiB; any SPDY peer inflates it.
 */
#define LC_SPDY_DEFLATE_WBITS    12
#define LC_SPDY_DEFLATE_MEMLEVEL 6

typedef struct lc_spdy_deflater {
    z_stream zs;
    int state;               /* 0: nothing written yet, 1: ready, < 0: failed (sticky) */
    int level;
    lc_buf raw;              /* the uncompressed block being compressed */
    uint32_t *dup_tab;
    size_t dup_cap;
} lc_spdy_deflater;

/* level: a zlib level 0..9 or Z_DEFAULT_COMPRESSION. No allocation. */
void lc__spdy_deflater_init(lc_spdy_deflater *z, int level);
void lc__spdy_deflater_free(lc_spdy_deflater *z);

/*
 * Appends the compressed header block of h[0..n) to out, ending with a sync
 * flush. Bad pairs (rules above) fail with LC_EINVAL before the zlib stream is
 * touched; LC_ENOMEM then too. Once compression has started, a failure leaves
 * the peer's stream out of step: the deflater then returns LC__SPDY_EBROKEN
 * (sticky). out->len is restored on every failure.
 */
int lc__spdy_deflate_block(lc_spdy_deflater *z, lc_buf *out, const lc_spdy_header *h, size_t n);

/*
 * The most bytes lc__spdy_deflate_block can append for h[0..n) with z as it
 * is now (exact at level 0), so that a frame that could not carry the block
 * is refused before anything is compressed; 0 for bad pairs.
 */
size_t lc__spdy_deflate_bound(const lc_spdy_deflater *z, const lc_spdy_header *h, size_t n);

/* ---- decoder ------------------------------------------------------------- */

/*
 * One decoded frame (or, for DATA, one fragment of a frame). Pointers stay
 * valid until the next lc__spdy_decode() on the same decoder, and, when they
 * point into the fed input, as long as that input.
 */
typedef struct lc_spdy_frame {
    int type;               /* enum lc_spdy_type */
    uint16_t raw_type;      /* control frames: the type field as received */
    uint8_t flags;
    uint8_t priority;       /* SYN_STREAM: 0 (highest) .. 7 */
    uint8_t slot;           /* SYN_STREAM */
    int data_last;          /* DATA: this fragment ends the frame (act on FIN then) */
    uint32_t length;        /* payload length from the frame header */
    uint32_t stream_id;     /* DATA, SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS,
                               WINDOW_UPDATE; GOAWAY: the last-good-stream-id */
    uint32_t assoc_id;      /* SYN_STREAM: associated-to-stream-id */
    uint32_t status;        /* RST_STREAM, GOAWAY */
    uint32_t value;         /* PING: id; WINDOW_UPDATE: delta; SETTINGS: entry count */
    uint32_t data_offset;   /* DATA: offset of this fragment in the frame's payload */
    const uint8_t *data;    /* DATA: the fragment; SETTINGS: the raw entries */
    size_t data_len;
    const lc_spdy_header *headers; /* SYN_STREAM, SYN_REPLY, HEADERS */
    size_t n_headers;
} lc_spdy_frame;

/* One SETTINGS entry. */
typedef struct lc_spdy_setting {
    uint8_t flags;
    uint32_t id;            /* 24 bits */
    uint32_t value;
} lc_spdy_setting;

/* Entry i (< f->value) of a decoded SETTINGS frame. */
void lc__spdy_setting_get(const lc_spdy_frame *f, uint32_t i, lc_spdy_setting *out);

typedef struct lc_spdy_decoder {
    lc_spdy_limits lim;
    int state;              /* where in a frame the input stands */
    int error;              /* first error, returned by every later call */
    uint8_t head[LC_SPDY_HEADER_LEN];
    uint8_t head_have;
    uint8_t flags;
    uint16_t raw_type;
    int type;
    uint32_t length;        /* payload bytes of the current frame */
    uint32_t done;          /* of which already consumed */
    uint32_t stream_id;     /* DATA: of the current frame */
    lc_buf ctl;             /* a control payload that arrived split */
    lc_spdy_inflater inf;   /* the peer's header stream */
} lc_spdy_decoder;

/* lim may be NULL (defaults); it is copied. No allocation. */
void lc__spdy_decoder_init(lc_spdy_decoder *d, const lc_spdy_limits *lim);
void lc__spdy_decoder_free(lc_spdy_decoder *d);

#define LC_SPDY_FRAME 1

/*
 * Decodes from p[0..n), which continues the bytes fed before (split
 * anywhere). *used gets the bytes consumed. Returns
 *   LC_SPDY_FRAME  a frame is in *f (*used may be < n: call again with the rest);
 *   0              every byte was consumed and no frame completed;
 *   < 0            an error (LC__SPDY_E*, LC_ENOMEM), sticky.
 *
 * DATA payloads are never copied: each call reports the part of the payload
 * present in the input as a fragment (f->data points into p, f->data_offset,
 * f->data_last); a frame contiguous in the input is one fragment, and an
 * empty DATA frame is one empty fragment. Control frames are reported whole,
 * parsed in place when contiguous, else after gathering them (up to
 * max_control_frame bytes). Header blocks are inflated in the session's
 * stream as their frames complete. Unknown control types are skipped without
 * buffering and reported once as LC_SPDY_UNKNOWN (callers ignore them).
 * Lengths are checked on the frame header, before any payload is stored.
 * Flags a type does not define are passed through; frame semantics (stream
 * states, id parity, PING echo) are the session's.
 */
int lc__spdy_decode(lc_spdy_decoder *d, const uint8_t *p, size_t n, size_t *used,
                    lc_spdy_frame *f);

/* 1 if the decoder stands between frames (a carrier EOF here is clean). */
int lc__spdy_decoder_idle(const lc_spdy_decoder *d);

/* ---- encoder ------------------------------------------------------------- */

static inline void lc__spdy_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Writes the 8-byte header of a DATA frame of len payload bytes (the session
 * writes it and the payload with one writev). The caller keeps
 * stream_id <= LC_SPDY_MAX_STREAM_ID and len <= LC_SPDY_MAX_LENGTH. */
static inline void lc__spdy_data_header(uint8_t out[LC_SPDY_HEADER_LEN], uint32_t stream_id,
                                        uint8_t flags, uint32_t len)
{
    lc__spdy_put32(out, stream_id & LC_SPDY_MAX_STREAM_ID);
    lc__spdy_put32(out + 4, ((uint32_t)flags << 24) | (len & LC_SPDY_MAX_LENGTH));
}

/* Writes the 8-byte header of a control frame (version 3). */
static inline void lc__spdy_control_header(uint8_t out[LC_SPDY_HEADER_LEN], uint16_t type,
                                           uint8_t flags, uint32_t len)
{
    lc__spdy_put32(out, 0x80000000u | ((uint32_t)LC_SPDY_VERSION << 16) | type);
    lc__spdy_put32(out + 4, ((uint32_t)flags << 24) | (len & LC_SPDY_MAX_LENGTH));
}

/*
 * Frame encoders: each appends one whole frame to b and returns 0, or fails
 * with b->len unchanged: LC_EINVAL (a stream id of 0 where a stream is
 * needed or above 2^31 - 1, a payload over 2^24 - 1, a header block whose
 * compressed form could make it so (refused before compressing: the
 * deflater stays usable), priority > 7, bad header pairs), LC_ENOMEM,
 * LC__SPDY_EBROKEN (deflater unusable).
 * The header-block frames compress through z, the session's sending context:
 * frames must reach the wire in the order they were encoded.
 */
int lc__spdy_put_data(lc_buf *b, uint32_t stream_id, uint8_t flags, const void *p, size_t n);

/* Zero-copy DATA: data_begin appends a header with length 0 and stores its
 * position in *mark; the caller appends the payload (e.g. encodes a message
 * straight into b); data_end patches the length. data_end fails with
 * LC__SPDY_EFRAME_SIZE (b unchanged from the mark on) if the payload exceeds
 * 2^24 - 1 bytes: the caller then splits it. */
int lc__spdy_data_begin(lc_buf *b, uint32_t stream_id, uint8_t flags, size_t *mark);
int lc__spdy_data_end(lc_buf *b, size_t mark);

int lc__spdy_put_syn_stream(lc_buf *b, lc_spdy_deflater *z, uint32_t stream_id,
                            uint32_t assoc_id, uint8_t priority, uint8_t slot, uint8_t flags,
                            const lc_spdy_header *h, size_t n);
int lc__spdy_put_syn_reply(lc_buf *b, lc_spdy_deflater *z, uint32_t stream_id, uint8_t flags,
                           const lc_spdy_header *h, size_t n);
int lc__spdy_put_headers(lc_buf *b, lc_spdy_deflater *z, uint32_t stream_id, uint8_t flags,
                         const lc_spdy_header *h, size_t n);
int lc__spdy_put_rst_stream(lc_buf *b, uint32_t stream_id, uint32_t status);
/* settings[i].id must fit in 24 bits. */
int lc__spdy_put_settings(lc_buf *b, uint8_t flags, const lc_spdy_setting *s, size_t n);
int lc__spdy_put_ping(lc_buf *b, uint32_t id);
int lc__spdy_put_goaway(lc_buf *b, uint32_t last_good_stream_id, uint32_t status);
/* delta: 1 .. 2^31 - 1 */
int lc__spdy_put_window_update(lc_buf *b, uint32_t stream_id, uint32_t delta);

#endif
