/*
 * msg_internal.h - the layout of messages and values (src/msg), shared with the
 * codec (src/codec) and the channel core (src/core). Never installed.
 *
 * A message owns an arena: every value, string and array of a message lives in
 * it and is freed in one go. The first arena block is inline in the lc_msg, so
 * a small message (a SimpleStruct) costs exactly one malloc.
 */
#ifndef LC_MSG_INTERNAL_H
#define LC_MSG_INTERNAL_H

#include "libchan.h"

/* Flag bits of lc_value.flags */
#define LC_VF_TAKEN  0x01u /* attachment taken out of the message */
#define LC_VF_PLACED 0x02u /* value is the root or inside a container */
#define LC_VF_MARK   0x04u /* scratch bit of lc_unpack's check pass; clear outside it */

/* Internal-only type: a reference id read from the wire whose stream has not
 * been resolved (codec used without a session). Never visible to users. */
#define LC__REF ((lc_type)100)

struct lc_value {
    uint8_t type;   /* lc_type */
    uint8_t flags;  /* LC_VF_* */
    uint8_t mode;   /* LC_STREAM: lc_stream_mode; LC__REF: wire ext type */
    uint8_t pad_;
    uint32_t len;   /* string/binary bytes, array elements, map pairs */
    uint32_t cap;   /* array/map capacity (elements resp. pairs) */
    lc_msg *owner;  /* the message whose arena holds this value */
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double d;
        const char *bytes;     /* LC_STRING (NUL-terminated), LC_BINARY */
        lc_value **items;      /* LC_ARRAY: len items; LC_MAP: 2*len (key, value) */
        struct { int64_t sec; uint32_t nsec; } t;
        lc_sender *sender;
        lc_receiver *receiver;
        int fd;
        uint64_t ref;          /* LC__REF */
    } u;
};

typedef struct lc_arena_block {
    struct lc_arena_block *next;
    size_t size;
    /* data follows, 16-aligned */
} lc_arena_block;

#define LC_MSG_INLINE_ARENA 384

struct lc_msg {
    lc_msg *next;              /* intrusive link, free for the channel core to use */
    lc_value *root;
    /* opaque body (when body != NULL the root is unused) */
    void *body;
    size_t body_len;
    char *content_type;
    /* every attachment value ever created in this message, so that freeing the
     * message releases them whether or not they were placed in the tree */
    lc_value **att;
    uint32_t att_len, att_cap;
    /* attachments listed for an opaque body (subset of att, in order) */
    lc_value **body_att;
    uint32_t body_att_len, body_att_cap;
    /* wire form: the message is these msgpack bytes (in the arena), with
     * no ext in them but times, and root is unused until lc_msg_root builds the tree
     * from them (lc__msg_materialize). Made by lc_pack and by the decoder;
     * see plain_length in src/codec/decode.c. */
    const uint8_t *wire;
    size_t wire_len;
    uint8_t has_refs;          /* the decoder made LC__REF values (a session resolves them) */
    uint32_t wire_copied;      /* bytes of strings lc_unpack copied out of the wire form (pack.c) */
    /* arena: bump pointer in the current block */
    char *arena_ptr;
    char *arena_end;
    lc_arena_block *blocks;    /* extra malloc'ed blocks */
    _Alignas(16) char inline_arena[LC_MSG_INLINE_ARENA];
};

/* The slow path of lc__arena_alloc: n (a multiple of 8) does not fit in the
 * current block. */
void *lc__arena_grow(lc_msg *m, size_t n);

/* Allocates n bytes (8-aligned) in m's arena; NULL when out of memory. The
 * bump is inline: the builder and the decoder call it for every value. */
static inline void *lc__arena_alloc(lc_msg *m, size_t n)
{
    n = (n + 7u) & ~(size_t)7u;
    if ((size_t)(m->arena_end - m->arena_ptr) >= n) {
        void *p = m->arena_ptr;
        m->arena_ptr += n;
        return p;
    }
    return lc__arena_grow(m, n);
}

/* Allocates an uninitialised value of type t in m (owner set, flags 0). */
lc_value *lc__value_alloc(lc_msg *m, lc_type t);

/* lc_map_set_value of a fresh string key (klen bytes at key) and v, for a
 * builder that made map and v itself (lc_pack): none of its checks can
 * fail there. LC_ENOMEM. */
int lc__map_append_key(lc_msg *m, lc_value *map, const char *key, size_t klen, lc_value *v);

/* Builds the value tree of a wire-form message from its bytes (codec):
 * m->root set and m->wire cleared, or LC_ENOMEM with m unchanged. */
int lc__msg_materialize(lc_msg *m);

/* Registers an attachment value so lc_msg_free releases it. */
int lc__msg_track_attachment(lc_msg *m, lc_value *v);

/* Resets a message for reuse after its contents were released (bench/codec). */
void lc__msg_init(lc_msg *m);

#endif
