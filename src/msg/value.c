/*
 * value.c - messages and their value trees (src/msg): the arena, the explicit
 * builder, getters, opaque bodies, and attachment ownership.
 */
#include "msg_internal.h"
#include "../core/chan_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- arena --------------------------------------------------------------- */

void lc__msg_init(lc_msg *m)
{
    /* The header before the arena, zeroed 64 bytes at a time: GCC inlines
     * each as vector stores, where one memset of it (112 bytes) became a
     * `rep stos` whose start-up cost more than the rest of a cached
     * lc_msg_new. */
    char *p = (char *)m;
    size_t n = offsetof(lc_msg, inline_arena);
    for (size_t off = 0; off < n; off += 64)
        memset(p + off, 0, n - off < 64 ? n - off : 64);
    m->arena_ptr = m->inline_arena;
    m->arena_end = m->inline_arena + sizeof m->inline_arena;
}

__attribute__((noinline, cold))
void *lc__arena_grow(lc_msg *m, size_t n)
{
    /* A new block: at least 4 KiB, doubling with the number of blocks keeps the
     * count logarithmic for big messages. Large requests get a block of their
     * own so the current block's tail stays usable. */
    /* The first extra block stays within glibc's per-thread cache (chunks up
     * to 1032 bytes), so medium messages keep a fast malloc/free. */
    size_t want = 1024 - sizeof(lc_arena_block) - 16 - 16;
    if (m->blocks != NULL && m->blocks->size < (1u << 20))
        want = m->blocks->size * 2;
    if (n > want / 2) {
        lc_arena_block *b = malloc(sizeof *b + 16 + n);
        if (b == NULL)
            return NULL;
        b->size = n;
        if (m->blocks != NULL) {
            b->next = m->blocks->next;
            m->blocks->next = b;
        } else {
            b->next = NULL;
            m->blocks = b;
        }
        return (char *)b + ((sizeof *b + 15u) & ~(size_t)15u);
    }
    lc_arena_block *b = malloc(sizeof *b + 16 + want);
    if (b == NULL)
        return NULL;
    b->size = want;
    b->next = m->blocks;
    m->blocks = b;
    m->arena_ptr = (char *)b + ((sizeof *b + 15u) & ~(size_t)15u);
    m->arena_end = m->arena_ptr + want;
    void *p = m->arena_ptr;
    m->arena_ptr += n;
    return p;
}

/* A value of type t with `extra` bytes of the arena right after it. */
static lc_value *value_alloc(lc_msg *m, lc_type t, size_t extra)
{
    lc_value *v = lc__arena_alloc(m, sizeof *v + extra);
    if (v == NULL)
        return NULL;
    v->type = (uint8_t)t;
    v->flags = 0;
    v->mode = 0;
    v->pad_ = 0;
    v->len = 0;
    v->cap = 0;
    v->owner = m;
    v->u.u = 0;
    return v;
}

lc_value *lc__value_alloc(lc_msg *m, lc_type t)
{
    return value_alloc(m, t, 0);
}

/* Grows an array of pointers living in the arena (old storage is abandoned). */
static int grow_ptrs(lc_msg *m, lc_value ***items, uint32_t used, uint32_t *cap, uint32_t need)
{
    if (need <= *cap)
        return 0;
    uint32_t ncap = *cap ? *cap * 2 : 4;
    while (ncap < need)
        ncap *= 2;
    lc_value **n = lc__arena_alloc(m, (size_t)ncap * sizeof *n);
    if (n == NULL)
        return LC_ENOMEM;
    if (used)
        memcpy(n, *items, (size_t)used * sizeof *n);
    *items = n;
    *cap = ncap;
    return 0;
}

int lc__msg_track_attachment(lc_msg *m, lc_value *v)
{
    int rc = grow_ptrs(m, &m->att, m->att_len, &m->att_cap, m->att_len + 1);
    if (rc != 0)
        return rc;
    m->att[m->att_len++] = v;
    return 0;
}

/* ---- messages ------------------------------------------------------------ */

static lc_value nil_root_proto = { .type = LC_NIL };

/*
 * Freed messages are recycled through per-thread caches and a shared depot
 * (the magazines of Bonwick's slab allocator, for one object size).
 *
 * Why: glibc's per-thread cache holds 7 chunks of a size. A session decodes
 * up to 32 messages ahead and its receiver frees them in a burst, so most of
 * those frees and the next burst's mallocs took the arena's slow path (~8% of
 * a one-way receiver's CPU). And a message made in one thread and freed in
 * another (any in-process pipeline) went back to the arena it came from under
 * its lock, contended by both threads: bench_chan's buffered one-way with a
 * new message per send ran at 0.7-0.9 M msgs/s against 4.7-5.2 M for prebuilt
 * ones. bench_msg and bench_chan measure both.
 *
 * Each thread keeps two magazines of up to MAG messages. It allocates from
 * `loaded` and frees into it; when `loaded` is empty (full) and `prev` is
 * full (empty) the two swap; otherwise a whole magazine is traded with the
 * depot under one lock: one lock round per MAG messages, however the messages
 * travel between threads. The depot keeps at most DEPOT_MAX full magazines
 * (~400 KB); beyond that messages go back to malloc. Under AddressSanitizer
 * a cached message is poisoned but for its link, so a use after free is
 * still caught.
 */
#if defined(__SANITIZE_ADDRESS__)
#define MSG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MSG_ASAN 1
#endif
#endif
#ifdef MSG_ASAN
#include <sanitizer/asan_interface.h>
#define MSG_POISON(m) ASAN_POISON_MEMORY_REGION(&(m)->root, sizeof(lc_msg) - offsetof(lc_msg, root))
#define MSG_UNPOISON(m) ASAN_UNPOISON_MEMORY_REGION(&(m)->root, sizeof(lc_msg) - offsetof(lc_msg, root))
#else
#define MSG_POISON(m) ((void)(m))
#define MSG_UNPOISON(m) ((void)(m))
#endif
_Static_assert(offsetof(lc_msg, next) == 0 && offsetof(lc_msg, root) == sizeof(lc_msg *),
               "a cached message keeps only its first field (the link) unpoisoned");

#define MAG 32
#define DEPOT_MAX 32

typedef struct magazine {
    lc_msg *head; /* linked through lc_msg.next */
    unsigned n;
} magazine;

typedef struct msg_cache {
    magazine loaded, prev;
} msg_cache;

static struct {
    pthread_mutex_t mu;
    lc_msg *full[DEPOT_MAX]; /* chains of MAG messages */
    unsigned n;
} depot = { PTHREAD_MUTEX_INITIALIZER, { NULL }, 0 };

static _Thread_local msg_cache *tls_cache;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void mag_free(magazine *g)
{
    while (g->head != NULL) {
        lc_msg *m = g->head;
        g->head = m->next;
        MSG_UNPOISON(m);
        free(m);
    }
    g->n = 0;
}

static void cache_drop(void *p)
{
    msg_cache *c = p;
    mag_free(&c->loaded);
    mag_free(&c->prev);
    free(c);
    /* another thread-exit destructor may still free messages here: it
     * gets a new cache (dropped in the next destructor round) */
    tls_cache = NULL;
}

/* fork(): the depot's lock is held across it, so a child never inherits
 * it locked by a thread that does not exist there (a pre-forking server's
 * workers make messages too). */
static void depot_lock(void)
{
    pthread_mutex_lock(&depot.mu);
}

static void depot_unlock(void)
{
    pthread_mutex_unlock(&depot.mu);
}

static void cache_key_make(void)
{
    pthread_key_create(&cache_key, cache_drop);
    pthread_atfork(depot_lock, depot_unlock, depot_unlock);
}

/* The calling thread's cache, made on first use; NULL when out of memory. */
static msg_cache *cache_get(void)
{
    if (tls_cache == NULL) {
        pthread_once(&cache_once, cache_key_make);
        msg_cache *c = calloc(1, sizeof *c);
        if (c == NULL || pthread_setspecific(cache_key, c) != 0) {
            free(c);
            return NULL;
        }
        tls_cache = c;
    }
    return tls_cache;
}

static void mag_swap(msg_cache *c)
{
    magazine t = c->loaded;
    c->loaded = c->prev;
    c->prev = t;
}

/* A message from the cache, or NULL when neither magazine nor the depot has
 * one. */
static lc_msg *cache_take(msg_cache *c)
{
    if (c->loaded.n == 0) {
        if (c->prev.n > 0) {
            mag_swap(c);
        } else {
            /* the empty `loaded` is traded for a full one of the depot */
            lc_msg *chain = NULL;
            pthread_mutex_lock(&depot.mu);
            if (depot.n > 0)
                chain = depot.full[--depot.n];
            pthread_mutex_unlock(&depot.mu);
            if (chain == NULL)
                return NULL;
            c->loaded.head = chain;
            c->loaded.n = MAG;
        }
    }
    lc_msg *m = c->loaded.head;
    c->loaded.head = m->next;
    c->loaded.n--;
    MSG_UNPOISON(m);
    return m;
}

static void cache_put(msg_cache *c, lc_msg *m)
{
    if (c->loaded.n == MAG) {
        if (c->prev.n == 0) {
            mag_swap(c);
        } else {
            /* `prev` (full) goes to the depot, or back to malloc */
            bool kept = false;
            pthread_mutex_lock(&depot.mu);
            if (depot.n < DEPOT_MAX) {
                depot.full[depot.n++] = c->prev.head;
                kept = true;
            }
            pthread_mutex_unlock(&depot.mu);
            if (!kept)
                mag_free(&c->prev);
            c->prev = c->loaded;
            c->loaded.head = NULL;
            c->loaded.n = 0;
        }
    }
    m->next = c->loaded.head;
    c->loaded.head = m;
    c->loaded.n++;
    MSG_POISON(m);
}

LC_API lc_msg *lc_msg_new(void)
{
    msg_cache *c = cache_get();
    lc_msg *m = c != NULL ? cache_take(c) : NULL;
    if (m == NULL && (m = malloc(sizeof *m)) == NULL)
        return NULL;
    lc__msg_init(m);
    return m;
}

static void msg_release(lc_msg *m)
{
    msg_cache *c = cache_get();
    if (c != NULL)
        cache_put(c, m);
    else
        free(m);
}

static void release_attachment(lc_value *v)
{
    if (v->flags & LC_VF_TAKEN)
        return;
    v->flags |= LC_VF_TAKEN;
    switch (v->type) {
    case LC_SENDER:
        lc__sender_drop(v->u.sender);
        break;
    case LC_RECEIVER:
        lc__receiver_drop(v->u.receiver);
        break;
    case LC_STREAM:
        if (v->u.fd >= 0)
            close(v->u.fd);
        break;
    default:
        break;
    }
}

/*
 * Freeing a message releases its channel ends, and the last release of a
 * Receiver frees the messages its queue still holds, which may carry
 * Receivers in turn: one level of recursion per link of a chain of them
 * (each one's message naming the next), a depth a peer chooses (a review
 * helper: 3000 links overflowed a 256 KiB thread stack, 100000 the 8 MiB
 * main one). Past FREE_DEPTH_MAX levels on a thread, a message joins a list
 * (through m->next, which nothing else uses once it is being freed) that
 * the thread's outermost lc_msg_free empties before it returns.
 */
#define FREE_DEPTH_MAX 8

static _Thread_local unsigned free_depth;
static _Thread_local lc_msg *free_later;

static void msg_free_now(lc_msg *m);

LC_API void lc_msg_free(lc_msg *m)
{
    if (m == NULL)
        return;
    if (m->att_len == 0) {
        msg_free_now(m); /* frees no other message: no thread-local to look at */
        return;
    }
    if (free_depth >= FREE_DEPTH_MAX) {
        m->next = free_later;
        free_later = m;
        return;
    }
    free_depth++;
    msg_free_now(m);
    while (free_depth == 1 && free_later != NULL) {
        lc_msg *n = free_later;
        free_later = n->next;
        msg_free_now(n);
    }
    free_depth--;
}

static void msg_free_now(lc_msg *m)
{
    for (uint32_t i = 0; i < m->att_len; i++)
        release_attachment(m->att[i]);
    if (m->body != NULL || m->content_type != NULL) { /* rare: spare two calls */
        free(m->body);
        free(m->content_type);
    }
    lc_arena_block *b = m->blocks;
    while (b != NULL) {
        lc_arena_block *n = b->next;
        free(b);
        b = n;
    }
    msg_release(m);
}

LC_API lc_value *lc_msg_root(lc_msg *m)
{
    if (m == NULL)
        return NULL;
    if (m->wire != NULL && lc__msg_materialize(m) != 0)
        return &nil_root_proto;
    if (m->root == NULL) {
        /* Lazily give every message a real nil root, so callers never see NULL. */
        lc_value *v = lc__value_alloc(m, LC_NIL);
        if (v == NULL)
            return &nil_root_proto;
        v->flags |= LC_VF_PLACED;
        m->root = v;
    }
    return m->root;
}

/* A value may be placed only once and only inside its own message. */
static int place(lc_msg *m, lc_value *v)
{
    if (m == NULL || v == NULL || v->owner != m)
        return LC_EINVAL;
    if (v->flags & LC_VF_PLACED)
        return LC_EINVAL;
    v->flags |= LC_VF_PLACED;
    return 0;
}

LC_API int lc_msg_set_root(lc_msg *m, lc_value *v)
{
    int rc = place(m, v);
    if (rc != 0)
        return rc;
    m->root = v;
    m->wire = NULL; /* replaces what the bytes held */
    m->wire_len = 0;
    return 0;
}

LC_API int lc_msg_set_body(lc_msg *m, const void *data, size_t len, const char *content_type)
{
    if (m == NULL || (data == NULL && len > 0) || content_type == NULL)
        return LC_EINVAL;
    void *b = malloc(len ? len : 1);
    char *ct = strdup(content_type);
    if (b == NULL || ct == NULL) {
        free(b);
        free(ct);
        return LC_ENOMEM;
    }
    if (len)
        memcpy(b, data, len);
    free(m->body);
    free(m->content_type);
    m->body = b;
    m->body_len = len;
    m->content_type = ct;
    m->wire = NULL;
    m->wire_len = 0;
    return 0;
}

LC_API const void *lc_msg_body(const lc_msg *m, size_t *len, const char **content_type)
{
    if (m == NULL || m->body == NULL)
        return NULL;
    if (len)
        *len = m->body_len;
    if (content_type)
        *content_type = m->content_type;
    return m->body;
}

static bool is_attachment(const lc_value *v)
{
    return v->type == LC_SENDER || v->type == LC_RECEIVER || v->type == LC_STREAM;
}

LC_API int lc_msg_attach(lc_msg *m, lc_value *a)
{
    if (m == NULL || a == NULL || !is_attachment(a))
        return LC_EINVAL;
    int rc = place(m, a);
    if (rc != 0)
        return rc;
    rc = grow_ptrs(m, &m->body_att, m->body_att_len, &m->body_att_cap, m->body_att_len + 1);
    if (rc != 0) {
        a->flags &= (uint8_t)~LC_VF_PLACED;
        return rc;
    }
    m->body_att[m->body_att_len] = a;
    return (int)m->body_att_len++;
}

LC_API size_t lc_msg_attachment_count(const lc_msg *m)
{
    return m ? m->body_att_len : 0;
}

LC_API lc_value *lc_msg_attachment(lc_msg *m, size_t index)
{
    if (m == NULL || index >= m->body_att_len)
        return NULL;
    return m->body_att[index];
}

/* ---- builder ------------------------------------------------------------- */

LC_API lc_value *lc_new_nil(lc_msg *m)
{
    return m ? lc__value_alloc(m, LC_NIL) : NULL;
}

LC_API lc_value *lc_new_bool(lc_msg *m, bool b)
{
    lc_value *v = m ? lc__value_alloc(m, LC_BOOL) : NULL;
    if (v)
        v->u.b = b;
    return v;
}

LC_API lc_value *lc_new_int(lc_msg *m, int64_t i)
{
    lc_value *v = m ? lc__value_alloc(m, LC_INT) : NULL;
    if (v)
        v->u.i = i;
    return v;
}

LC_API lc_value *lc_new_uint(lc_msg *m, uint64_t u)
{
    /* Non-negative numbers that fit int64 are LC_INT, the same as after a
     * msgpack round trip, so a value's type does not depend on its history. */
    if (u <= (uint64_t)INT64_MAX)
        return lc_new_int(m, (int64_t)u);
    lc_value *v = m ? lc__value_alloc(m, LC_UINT) : NULL;
    if (v)
        v->u.u = u;
    return v;
}

LC_API lc_value *lc_new_double(lc_msg *m, double d)
{
    lc_value *v = m ? lc__value_alloc(m, LC_DOUBLE) : NULL;
    if (v)
        v->u.d = d;
    return v;
}

static lc_value *new_bytes(lc_msg *m, lc_type t, const void *data, size_t len)
{
    if (m == NULL || (data == NULL && len > 0) || len > UINT32_MAX - 1)
        return NULL;
    /* the bytes right after the value: one allocation (as the decoder does) */
    lc_value *v = value_alloc(m, t, len + 1);
    if (v == NULL)
        return NULL;
    char *p = (char *)(v + 1);
    if (len)
        memcpy(p, data, len);
    p[len] = '\0';
    v->u.bytes = p;
    v->len = (uint32_t)len;
    return v;
}

LC_API lc_value *lc_new_string(lc_msg *m, const char *s)
{
    return s ? new_bytes(m, LC_STRING, s, strlen(s)) : NULL;
}

LC_API lc_value *lc_new_stringn(lc_msg *m, const char *s, size_t len)
{
    return new_bytes(m, LC_STRING, s, len);
}

LC_API lc_value *lc_new_binary(lc_msg *m, const void *data, size_t len)
{
    return new_bytes(m, LC_BINARY, data, len);
}

LC_API lc_value *lc_new_time(lc_msg *m, int64_t sec, uint32_t nsec)
{
    if (nsec >= 1000000000u)
        return NULL;
    lc_value *v = m ? lc__value_alloc(m, LC_TIME) : NULL;
    if (v) {
        v->u.t.sec = sec;
        v->u.t.nsec = nsec;
    }
    return v;
}

LC_API lc_value *lc_new_array(lc_msg *m)
{
    return m ? lc__value_alloc(m, LC_ARRAY) : NULL;
}

LC_API lc_value *lc_new_map(lc_msg *m)
{
    return m ? lc__value_alloc(m, LC_MAP) : NULL;
}

static lc_value *new_attachment(lc_msg *m, lc_type t)
{
    lc_value *v = lc__value_alloc(m, t);
    if (v == NULL)
        return NULL;
    if (lc__msg_track_attachment(m, v) != 0)
        return NULL;
    return v;
}

LC_API lc_value *lc_new_sender(lc_msg *m, lc_sender *s)
{
    if (s == NULL)
        return NULL;
    lc_value *v = m ? new_attachment(m, LC_SENDER) : NULL;
    if (v == NULL) {
        lc__sender_drop(s); /* taken even on failure */
        return NULL;
    }
    v->u.sender = s;
    return v;
}

LC_API lc_value *lc_new_receiver(lc_msg *m, lc_receiver *r)
{
    if (r == NULL)
        return NULL;
    lc_value *v = m ? new_attachment(m, LC_RECEIVER) : NULL;
    if (v == NULL) {
        lc__receiver_drop(r);
        return NULL;
    }
    v->u.receiver = r;
    return v;
}

LC_API lc_value *lc_new_stream(lc_msg *m, int fd, lc_stream_mode mode)
{
    if (fd < 0)
        return NULL;
    lc_value *v = NULL;
    if (m != NULL && (mode == LC_STREAM_DUPLEX || mode == LC_STREAM_READ || mode == LC_STREAM_WRITE))
        v = new_attachment(m, LC_STREAM);
    if (v == NULL) {
        close(fd);
        return NULL;
    }
    v->u.fd = fd;
    v->mode = (uint8_t)mode;
    return v;
}

LC_API int lc_array_append(lc_msg *m, lc_value *arr, lc_value *v)
{
    if (m == NULL || arr == NULL || arr->owner != m || arr->type != LC_ARRAY || v == NULL)
        return LC_EINVAL;
    if (arr == v)
        return LC_EINVAL;
    if (arr->len == UINT32_MAX)
        return LC_ENOMEM;
    int rc = grow_ptrs(m, &arr->u.items, arr->len, &arr->cap, arr->len + 1);
    if (rc != 0)
        return rc;
    rc = place(m, v);
    if (rc != 0)
        return rc;
    arr->u.items[arr->len++] = v;
    return 0;
}

/* Appends the pair (key, v), both of m and unplaced, to map. */
static int map_place(lc_msg *m, lc_value *map, lc_value *key, lc_value *v)
{
    if (map->len >= UINT32_MAX / 2)
        return LC_ENOMEM;
    /* items holds 2*len pointers; cap counts pairs */
    if (map->len + 1 > map->cap) {
        uint32_t ncap = map->cap ? map->cap * 2 : 4;
        lc_value **n = lc__arena_alloc(m, (size_t)ncap * 2 * sizeof *n);
        if (n == NULL)
            return LC_ENOMEM;
        if (map->len)
            memcpy(n, map->u.items, (size_t)map->len * 2 * sizeof *n);
        map->u.items = n;
        map->cap = ncap;
    }
    key->flags |= LC_VF_PLACED;
    v->flags |= LC_VF_PLACED;
    map->u.items[2 * map->len] = key;
    map->u.items[2 * map->len + 1] = v;
    map->len++;
    return 0;
}

LC_API int lc_map_set_value(lc_msg *m, lc_value *map, lc_value *key, lc_value *v)
{
    if (m == NULL || map == NULL || map->owner != m || map->type != LC_MAP || key == NULL || v == NULL)
        return LC_EINVAL;
    if (key == v || map == key || map == v || key->owner != m || v->owner != m ||
        (key->flags & LC_VF_PLACED) || (v->flags & LC_VF_PLACED))
        return LC_EINVAL;
    return map_place(m, map, key, v);
}

int lc__map_append_key(lc_msg *m, lc_value *map, const char *key, size_t klen, lc_value *v)
{
    lc_value *k = new_bytes(m, LC_STRING, key, klen);
    return k != NULL ? map_place(m, map, k, v) : LC_ENOMEM;
}

LC_API int lc_map_set(lc_msg *m, lc_value *map, const char *key, lc_value *v)
{
    if (key == NULL)
        return LC_EINVAL;
    lc_value *k = lc_new_string(m, key);
    if (k == NULL)
        return m ? LC_ENOMEM : LC_EINVAL;
    return lc_map_set_value(m, map, k, v);
}

/* ---- getters ------------------------------------------------------------- */

LC_API const char *lc_type_name(lc_type t)
{
    switch (t) {
    case LC_NIL:      return "nil";
    case LC_BOOL:     return "bool";
    case LC_INT:      return "int";
    case LC_UINT:     return "uint";
    case LC_DOUBLE:   return "double";
    case LC_STRING:   return "string";
    case LC_BINARY:   return "binary";
    case LC_ARRAY:    return "array";
    case LC_MAP:      return "map";
    case LC_TIME:     return "time";
    case LC_SENDER:   return "sender";
    case LC_RECEIVER: return "receiver";
    case LC_STREAM:   return "stream";
    default:          return "reference";
    }
}

LC_API lc_type lc_value_type(const lc_value *v)
{
    return v ? (lc_type)v->type : LC_NIL;
}

LC_API bool lc_value_bool(const lc_value *v)
{
    return v && v->type == LC_BOOL && v->u.b;
}

LC_API int64_t lc_value_int(const lc_value *v)
{
    if (v == NULL)
        return 0;
    if (v->type == LC_INT)
        return v->u.i;
    if (v->type == LC_UINT && v->u.u <= (uint64_t)INT64_MAX)
        return (int64_t)v->u.u;
    return 0;
}

LC_API uint64_t lc_value_uint(const lc_value *v)
{
    if (v == NULL)
        return 0;
    if (v->type == LC_UINT)
        return v->u.u;
    if (v->type == LC_INT && v->u.i >= 0)
        return (uint64_t)v->u.i;
    return 0;
}

LC_API double lc_value_double(const lc_value *v)
{
    if (v == NULL)
        return 0;
    switch (v->type) {
    case LC_DOUBLE: return v->u.d;
    case LC_INT:    return (double)v->u.i;
    case LC_UINT:   return (double)v->u.u;
    default:        return 0;
    }
}

LC_API const char *lc_value_string(const lc_value *v, size_t *len)
{
    if (v == NULL || v->type != LC_STRING)
        return NULL;
    if (len)
        *len = v->len;
    return v->u.bytes;
}

LC_API const void *lc_value_binary(const lc_value *v, size_t *len)
{
    if (v == NULL || v->type != LC_BINARY)
        return NULL;
    if (len)
        *len = v->len;
    return v->u.bytes;
}

LC_API bool lc_value_time(const lc_value *v, int64_t *sec, uint32_t *nsec)
{
    if (v == NULL || v->type != LC_TIME)
        return false;
    if (sec)
        *sec = v->u.t.sec;
    if (nsec)
        *nsec = v->u.t.nsec;
    return true;
}

LC_API size_t lc_value_len(const lc_value *v)
{
    if (v == NULL)
        return 0;
    switch (v->type) {
    case LC_STRING:
    case LC_BINARY:
    case LC_ARRAY:
    case LC_MAP:
        return v->len;
    default:
        return 0;
    }
}

LC_API lc_value *lc_array_get(const lc_value *arr, size_t i)
{
    if (arr == NULL || arr->type != LC_ARRAY || i >= arr->len)
        return NULL;
    return arr->u.items[i];
}

LC_API lc_value *lc_map_get(const lc_value *map, const char *key)
{
    if (map == NULL || map->type != LC_MAP || key == NULL)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->len; i++) {
        const lc_value *k = map->u.items[2 * i];
        if (k->type == LC_STRING && k->len == klen && memcmp(k->u.bytes, key, klen) == 0)
            return map->u.items[2 * i + 1];
    }
    return NULL;
}

LC_API lc_value *lc_map_key(const lc_value *map, size_t i)
{
    if (map == NULL || map->type != LC_MAP || i >= map->len)
        return NULL;
    return map->u.items[2 * i];
}

LC_API lc_value *lc_map_value(const lc_value *map, size_t i)
{
    if (map == NULL || map->type != LC_MAP || i >= map->len)
        return NULL;
    return map->u.items[2 * i + 1];
}

LC_API lc_stream_mode lc_value_stream_mode(const lc_value *v)
{
    return (v && v->type == LC_STREAM) ? (lc_stream_mode)v->mode : LC_STREAM_DUPLEX;
}

LC_API bool lc_value_taken(const lc_value *v)
{
    return v && (v->flags & LC_VF_TAKEN);
}

static int take_check(lc_value *v, lc_type t)
{
    if (v == NULL || v->type != t)
        return LC_ETYPE;
    if (v->flags & LC_VF_TAKEN)
        return LC_ETAKEN;
    return 0;
}

LC_API lc_sender *lc_value_take_sender(lc_value *v, int *err)
{
    int rc = take_check(v, LC_SENDER);
    if (err)
        *err = rc;
    if (rc != 0)
        return NULL;
    v->flags |= LC_VF_TAKEN;
    return v->u.sender;
}

LC_API lc_receiver *lc_value_take_receiver(lc_value *v, int *err)
{
    int rc = take_check(v, LC_RECEIVER);
    if (err)
        *err = rc;
    if (rc != 0)
        return NULL;
    v->flags |= LC_VF_TAKEN;
    return v->u.receiver;
}

LC_API int lc_value_take_fd(lc_value *v, int *err)
{
    int rc = take_check(v, LC_STREAM);
    if (err)
        *err = rc;
    if (rc != 0)
        return -1;
    v->flags |= LC_VF_TAKEN;
    return v->u.fd;
}
