/*
 * pack.c - lc_pack()/lc_unpack(): jansson-style format strings over the value
 * tree (src/msg). Packing drives the builder of value.c; unpacking reads the
 * tree in two passes (check everything, then store and take attachments).
 */
#include "msg_internal.h"
#include "../core/chan_internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Nesting of '[' / '{' a format may have. Deeper formats are LC_EFORMAT, so the
 * recursion below is bounded. */
#define LC_FMT_MAX_DEPTH 64

/* Largest string/binary the value tree can hold (lc_value.len is 32-bit). */
#define LC_MAX_BYTES ((size_t)UINT32_MAX - 1)

/* One step of the path to the value being worked on. Kept as pointers so the
 * path text is only rendered when something fails: the success path of a pack
 * costs nothing for it. */
typedef struct lc_seg {
    const char *key; /* map key (not NUL-terminated), or NULL for an array index */
    size_t klen;
    size_t idx;
} lc_seg;

typedef struct lc_walk {
    const char *fmt;
    size_t pos;
    va_list ap;
    bool store;     /* unpack: second pass (store outputs, take attachments) */
    int nseg;       /* current path length */
    int code;       /* first error (pack keeps walking after a data error) */
    unsigned marks; /* unpack: attachments flagged LC_VF_MARK in the check pass */
    lc_error *err;
    lc_seg path[LC_FMT_MAX_DEPTH + 1];
} lc_walk;

/* ---- errors -------------------------------------------------------------- */

static void append(char *buf, size_t *len, size_t cap, const char *s, size_t n)
{
    if (*len + 1 >= cap)
        return;
    if (n > cap - 1 - *len)
        n = cap - 1 - *len;
    memcpy(buf + *len, s, n);
    *len += n;
    buf[*len] = '\0';
}

/* Writes "Req.Args[2]: " (nothing for the root) into err->text. */
static size_t render_path(const lc_walk *w)
{
    char *t = w->err->text;
    size_t cap = sizeof w->err->text, len = 0;
    t[0] = '\0';
    for (int i = 0; i < w->nseg; i++) {
        const lc_seg *s = &w->path[i];
        if (s->key != NULL) {
            if (i > 0)
                append(t, &len, cap, ".", 1);
            append(t, &len, cap, s->key, s->klen);
        } else {
            char num[32];
            int n = snprintf(num, sizeof num, "[%zu]", s->idx);
            append(t, &len, cap, num, (size_t)n);
        }
    }
    if (len > 0)
        append(t, &len, cap, ": ", 2);
    return len;
}

/* Records a data error at the current path (the first one wins). */
__attribute__((format(printf, 3, 4)))
static int fail(lc_walk *w, int code, const char *fmt, ...)
{
    if (w->code != 0)
        return w->code;
    w->code = code;
    w->err->code = code;
    size_t len = render_path(w);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err->text + len, sizeof w->err->text - len, fmt, ap);
    va_end(ap);
    return code;
}

/* Records a format error; it replaces an earlier data error, because it is the
 * bug to fix first (and it explains attachments left unreleased, see lc_pack). */
__attribute__((format(printf, 3, 4)))
static int fmt_fail(lc_walk *w, size_t at, const char *fmt, ...)
{
    if (w->code == LC_EFORMAT)
        return LC_EFORMAT;
    w->code = LC_EFORMAT;
    w->err->code = LC_EFORMAT;
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(w->err->text, sizeof w->err->text, "format: %s at offset %zu", msg, at);
    return LC_EFORMAT;
}

/* A format character for an error text: 'x', or \xNN when not printable. */
static const char *show(char c, char buf[8])
{
    unsigned char u = (unsigned char)c;
    if (u == '\0')
        snprintf(buf, 8, "end");
    else if (u >= 0x20 && u < 0x7f)
        snprintf(buf, 8, "'%c'", c);
    else
        snprintf(buf, 8, "\\x%02x", u);
    return buf;
}

static int unexpected(lc_walk *w, size_t at, bool packing)
{
    char b[8];
    char c = w->fmt[at];
    if (packing && (c == 'v' || c == '?' || c == '*'))
        return fmt_fail(w, at, "%s is only valid in lc_unpack", show(c, b));
    return fmt_fail(w, at, "unexpected %s", show(c, b));
}

static int type_fail(lc_walk *w, const char *want, const lc_value *v)
{
    return fail(w, LC_ETYPE, "expected %s, got %s", want, lc_type_name((lc_type)v->type));
}

/* ---- format scanning ----------------------------------------------------- */

/* Skips the separators (whitespace, ',' and ':') and returns the next format
 * character without consuming it ('\0' at the end). */
static char peek(lc_walk *w)
{
    for (;;) {
        char c = w->fmt[w->pos];
        switch (c) {
        case ' ': case '\t': case '\n': case '\r': case '\f': case '\v':
        case ',': case ':':
            w->pos++;
            continue;
        default:
            return c;
        }
    }
}

static bool take_char(lc_walk *w, char c)
{
    if (w->fmt[w->pos] == c) {
        w->pos++;
        return true;
    }
    return false;
}

static void enter(lc_walk *w, int depth, const char *key, size_t klen, size_t idx)
{
    w->path[depth].key = key;
    w->path[depth].klen = klen;
    w->path[depth].idx = idx;
    w->nseg = depth + 1;
}

/* ---- pack ---------------------------------------------------------------- */

/*
 * Builds the value the format describes at w->pos into *out. Once any error
 * is recorded (w->code), nothing more is built: the rest of the format is only
 * walked to consume the arguments and release the attachments among them.
 * Returns LC_EFORMAT when the format is malformed (the walk stops there), else 0.
 */
static int pack_value(lc_walk *w, lc_msg *m, int depth, lc_value **out)
{
    lc_value *v = NULL;
    *out = NULL;
    char c = peek(w);
    size_t at = w->pos;
    if (c == '\0')
        return fmt_fail(w, at, "unexpected end");
    w->pos++;

    switch (c) {
    case 'n':
        if (w->code == 0)
            v = lc_new_nil(m);
        break;
    case 'B': {
        int b = va_arg(w->ap, int);
        if (w->code == 0)
            v = lc_new_bool(m, b != 0);
        break;
    }
    case 'i': {
        int i = va_arg(w->ap, int);
        if (w->code == 0)
            v = lc_new_int(m, i);
        break;
    }
    case 'I': {
        int64_t i = va_arg(w->ap, int64_t);
        if (w->code == 0)
            v = lc_new_int(m, i);
        break;
    }
    case 'U': {
        uint64_t u = va_arg(w->ap, uint64_t);
        if (w->code == 0)
            v = lc_new_uint(m, u);
        break;
    }
    case 'f': {
        double d = va_arg(w->ap, double);
        if (w->code == 0)
            v = lc_new_double(m, d);
        break;
    }
    case 's':
    case 'b': {
        const void *p = va_arg(w->ap, const void *);
        size_t len;
        if (c == 'b' || take_char(w, '#')) {
            len = va_arg(w->ap, size_t);
            if (p == NULL && len > 0) {
                fail(w, LC_EINVAL, "NULL %s with length %zu", c == 's' ? "string" : "binary", len);
                break;
            }
        } else if (p == NULL) {
            fail(w, LC_EINVAL, "NULL string");
            break;
        } else {
            len = strlen(p);
        }
        if (len > LC_MAX_BYTES) {
            fail(w, LC_ETOOBIG, "%zu bytes is over the limit", len);
            break;
        }
        if (w->code == 0)
            v = c == 's' ? lc_new_stringn(m, p, len) : lc_new_binary(m, p, len);
        break;
    }
    case 't': {
        int64_t sec = va_arg(w->ap, int64_t);
        int nsec = va_arg(w->ap, int);
        if (nsec < 0 || nsec >= 1000000000)
            fail(w, LC_ERANGE, "nanoseconds %d out of range", nsec);
        else if (w->code == 0)
            v = lc_new_time(m, sec, (uint32_t)nsec);
        break;
    }
    case 'S': {
        lc_sender *s = va_arg(w->ap, lc_sender *);
        if (s == NULL)
            fail(w, LC_EINVAL, "NULL sender");
        else if (w->code != 0)
            lc__sender_drop(s);
        else
            v = lc_new_sender(m, s); /* takes s even when it fails */
        break;
    }
    case 'R': {
        lc_receiver *r = va_arg(w->ap, lc_receiver *);
        if (r == NULL)
            fail(w, LC_EINVAL, "NULL receiver");
        else if (w->code != 0)
            lc__receiver_drop(r);
        else
            v = lc_new_receiver(m, r);
        break;
    }
    case 'F': {
        int fd = va_arg(w->ap, int);
        /* An invalid number is never closed: it may be another thread's fd
         * by the time we would close it. */
        if (fd < 0 || fcntl(fd, F_GETFD) == -1)
            fail(w, LC_EBADF, "invalid fd %d", fd);
        else if (w->code != 0)
            close(fd);
        else
            v = lc_new_stream(m, fd, LC_STREAM_DUPLEX); /* takes fd even when it fails */
        break;
    }
    case '[': {
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        if (w->code == 0 && (v = lc_new_array(m)) == NULL)
            fail(w, LC_ENOMEM, "out of memory");
        for (size_t i = 0;; i++) {
            char d = peek(w);
            if (d == ']') {
                w->pos++;
                break;
            }
            if (d == '\0')
                return fmt_fail(w, w->pos, "missing ']'");
            lc_value *e;
            enter(w, depth, NULL, 0, i);
            int rc = pack_value(w, m, depth + 1, &e);
            if (rc == 0 && w->code == 0 && lc_array_append(m, v, e) != 0)
                fail(w, LC_ENOMEM, "out of memory");
            w->nseg = depth;
            if (rc != 0)
                return rc;
        }
        break;
    }
    case '{': {
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        if (w->code == 0 && (v = lc_new_map(m)) == NULL)
            fail(w, LC_ENOMEM, "out of memory");
        for (;;) {
            char d = peek(w);
            if (d == '}') {
                w->pos++;
                break;
            }
            if (d == '\0')
                return fmt_fail(w, w->pos, "missing '}'");
            if (d != 's') {
                char b[8];
                return fmt_fail(w, w->pos, "expected 's' for a map key, got %s", show(d, b));
            }
            w->pos++;
            const char *key = va_arg(w->ap, const char *);
            size_t klen;
            if (take_char(w, '#'))
                klen = va_arg(w->ap, size_t);
            else
                klen = key != NULL ? strlen(key) : 0;
            if (key == NULL)
                fail(w, LC_EINVAL, "NULL map key");
            else if (klen > LC_MAX_BYTES)
                fail(w, LC_ETOOBIG, "map key of %zu bytes is over the limit", klen);
            lc_value *e;
            enter(w, depth, key != NULL ? key : "(null)", key != NULL ? klen : 6, 0);
            int rc = pack_value(w, m, depth + 1, &e);
            if (rc == 0 && w->code == 0) {
                lc_value *k = lc_new_stringn(m, key, klen);
                if (k == NULL || lc_map_set_value(m, v, k, e) != 0)
                    fail(w, LC_ENOMEM, "out of memory");
            }
            w->nseg = depth;
            if (rc != 0)
                return rc;
        }
        break;
    }
    default:
        return unexpected(w, at, true);
    }
    if (v == NULL && w->code == 0)
        fail(w, LC_ENOMEM, "out of memory");
    *out = v;
    return 0;
}

LC_API lc_msg *lc_vpack_ex(lc_error *err, const char *fmt, va_list ap)
{
    lc_error local;
    lc_walk w;
    w.err = err != NULL ? err : &local;
    w.err->code = 0;
    w.err->text[0] = '\0';
    w.fmt = fmt;
    w.pos = 0;
    w.store = true; /* unused by pack */
    w.nseg = 0;
    w.code = 0;
    w.marks = 0;
    if (fmt == NULL) {
        fail(&w, LC_EINVAL, "NULL format");
        return NULL;
    }
    lc_msg *m = lc_msg_new();
    if (m == NULL)
        fail(&w, LC_ENOMEM, "out of memory"); /* still walk: release attachments */

    va_copy(w.ap, ap);
    lc_value *root = NULL;
    int rc = pack_value(&w, m, 0, &root);
    /* Whatever follows a complete value is a format error. Trailing values
     * are still walked so the attachments among them are released (a common
     * slip: "s:i, s:F" without the braces). */
    while (rc == 0 && peek(&w) != '\0') {
        if (w.code != LC_EFORMAT)
            fmt_fail(&w, w.pos, "more than one value at the top level");
        lc_value *ignored;
        rc = pack_value(&w, m, 0, &ignored);
    }
    va_end(w.ap);

    if (w.code == 0 && lc_msg_set_root(m, root) != 0)
        fail(&w, LC_ENOMEM, "out of memory"); /* cannot happen: root is fresh */
    if (w.code != 0) {
        /* Releases the attachments already placed in m. With a malformed
         * format, the arguments after the point of the error cannot be
         * decoded, so attachments among them are not released. */
        lc_msg_free(m);
        return NULL;
    }
    return m;
}

LC_API lc_msg *lc_pack_ex(lc_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lc_msg *m = lc_vpack_ex(err, fmt, ap);
    va_end(ap);
    return m;
}

LC_API lc_msg *lc_pack(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lc_msg *m = lc_vpack_ex(NULL, fmt, ap);
    va_end(ap);
    return m;
}

/* ---- unpack: syntax ------------------------------------------------------ */

/*
 * Checks the syntax of an unpack format without reading any argument, so a
 * malformed format is reported as such whatever the message holds.
 */
static int syntax_value(lc_walk *w, int depth)
{
    char c = peek(w);
    size_t at = w->pos;
    if (c == '\0')
        return fmt_fail(w, at, "unexpected end");
    w->pos++;
    switch (c) {
    case 'n': case 'B': case 'i': case 'I': case 'U': case 'f': case 'b': case 't':
    case 'S': case 'R': case 'F': case 'v':
        return 0;
    case 's':
        take_char(w, '#');
        return 0;
    case '[':
    case '{': {
        char close = c == '[' ? ']' : '}';
        if (depth >= LC_FMT_MAX_DEPTH)
            return fmt_fail(w, at, "nesting deeper than %d", LC_FMT_MAX_DEPTH);
        for (;;) {
            char d = peek(w);
            if (d == close) {
                w->pos++;
                return 0;
            }
            if (d == '\0')
                return fmt_fail(w, w->pos, "missing '%c'", close);
            if (d == '*') {
                w->pos++;
                if (peek(w) != close)
                    return fmt_fail(w, w->pos, "'*' must come just before '%c'", close);
                continue;
            }
            if (c == '{') {
                if (d != 's') {
                    char b[8];
                    return fmt_fail(w, w->pos, "expected 's' for a map key, got %s", show(d, b));
                }
                w->pos++;
                take_char(w, '#');
                take_char(w, '?');
            }
            int rc = syntax_value(w, depth + 1);
            if (rc != 0)
                return rc;
        }
    }
    default:
        if (c == '?')
            return fmt_fail(w, at, "'?' must follow a map key 's'");
        return unexpected(w, at, false);
    }
}

/* ---- unpack: check and store --------------------------------------------- */

/* First pair of map whose key is the string key[0..klen); NULL if none. */
static lc_value *map_find(const lc_value *map, const char *key, size_t klen)
{
    for (uint32_t i = 0; i < map->len; i++) {
        const lc_value *k = map->u.items[2 * i];
        if (k->type == LC_STRING && k->len == klen && (klen == 0 || memcmp(k->u.bytes, key, klen) == 0))
            return map->u.items[2 * i + 1];
    }
    return NULL;
}

/* Check pass: an attachment may be taken only once per format (a map key
 * repeated in the format would otherwise pass the check and fail the store). */
static int check_take(lc_walk *w, lc_value *v, const char *what)
{
    if (v->flags & LC_VF_TAKEN)
        return fail(w, LC_ETAKEN, "%s already taken", what);
    if (w->store)
        return 0;
    if (v->flags & LC_VF_MARK)
        return fail(w, LC_ETAKEN, "%s taken twice by the format", what);
    v->flags |= LC_VF_MARK;
    w->marks++;
    return 0;
}

/*
 * Matches the format at w->pos against v. v is NULL for an absent optional
 * key: the format is then only walked to consume its arguments. In the check
 * pass (!w->store) nothing is written; in the store pass (run only after a
 * successful check on the same message) outputs are stored and attachments
 * taken. A NULL output pointer means "check, do not store (nor take)".
 */
static int unpack_value(lc_walk *w, lc_value *v, int depth)
{
    char c = peek(w);
    w->pos++;
    switch (c) {
    case 'n':
        if (v != NULL && v->type != LC_NIL)
            return type_fail(w, "nil", v);
        return 0;
    case 'B': {
        bool *o = va_arg(w->ap, bool *);
        if (v == NULL)
            return 0;
        if (v->type != LC_BOOL)
            return type_fail(w, "bool", v);
        if (w->store && o != NULL)
            *o = v->u.b;
        return 0;
    }
    case 'i': {
        int *o = va_arg(w->ap, int *);
        if (v == NULL)
            return 0;
        if (v->type == LC_UINT)
            return fail(w, LC_ERANGE, "%" PRIu64 " does not fit in int", v->u.u);
        if (v->type != LC_INT)
            return type_fail(w, "int", v);
        if (v->u.i < INT_MIN || v->u.i > INT_MAX)
            return fail(w, LC_ERANGE, "%" PRId64 " does not fit in int", v->u.i);
        if (w->store && o != NULL)
            *o = (int)v->u.i;
        return 0;
    }
    case 'I': {
        int64_t *o = va_arg(w->ap, int64_t *);
        if (v == NULL)
            return 0;
        int64_t x;
        if (v->type == LC_INT) {
            x = v->u.i;
        } else if (v->type == LC_UINT) {
            if (v->u.u > (uint64_t)INT64_MAX)
                return fail(w, LC_ERANGE, "%" PRIu64 " does not fit in int64", v->u.u);
            x = (int64_t)v->u.u;
        } else {
            return type_fail(w, "int", v);
        }
        if (w->store && o != NULL)
            *o = x;
        return 0;
    }
    case 'U': {
        uint64_t *o = va_arg(w->ap, uint64_t *);
        if (v == NULL)
            return 0;
        uint64_t x;
        if (v->type == LC_UINT) {
            x = v->u.u;
        } else if (v->type == LC_INT) {
            if (v->u.i < 0)
                return fail(w, LC_ERANGE, "%" PRId64 " does not fit in uint64", v->u.i);
            x = (uint64_t)v->u.i;
        } else {
            return type_fail(w, "uint", v);
        }
        if (w->store && o != NULL)
            *o = x;
        return 0;
    }
    case 'f': {
        double *o = va_arg(w->ap, double *);
        if (v == NULL)
            return 0;
        double x;
        switch (v->type) {
        case LC_DOUBLE: x = v->u.d; break;
        case LC_INT:    x = (double)v->u.i; break;
        case LC_UINT:   x = (double)v->u.u; break;
        default:        return type_fail(w, "double", v);
        }
        if (w->store && o != NULL)
            *o = x;
        return 0;
    }
    case 's':
    case 'b': {
        const void **o = va_arg(w->ap, const void **);
        size_t *olen = NULL;
        if (c == 'b' || take_char(w, '#'))
            olen = va_arg(w->ap, size_t *);
        if (v == NULL)
            return 0;
        lc_type t = c == 's' ? LC_STRING : LC_BINARY;
        if (v->type != t)
            return type_fail(w, lc_type_name(t), v);
        if (w->store) {
            if (o != NULL)
                *o = v->u.bytes;
            if (olen != NULL)
                *olen = v->len;
        }
        return 0;
    }
    case 't': {
        int64_t *osec = va_arg(w->ap, int64_t *);
        int *onsec = va_arg(w->ap, int *);
        if (v == NULL)
            return 0;
        if (v->type != LC_TIME)
            return type_fail(w, "time", v);
        if (w->store) {
            if (osec != NULL)
                *osec = v->u.t.sec;
            if (onsec != NULL)
                *onsec = (int)v->u.t.nsec;
        }
        return 0;
    }
    case 'S': {
        lc_sender **o = va_arg(w->ap, lc_sender **);
        if (v == NULL)
            return 0;
        if (v->type != LC_SENDER)
            return type_fail(w, "sender", v);
        if (o == NULL)
            return 0;
        int rc = check_take(w, v, "sender");
        if (rc == 0 && w->store)
            *o = lc_value_take_sender(v, NULL);
        return rc;
    }
    case 'R': {
        lc_receiver **o = va_arg(w->ap, lc_receiver **);
        if (v == NULL)
            return 0;
        if (v->type != LC_RECEIVER)
            return type_fail(w, "receiver", v);
        if (o == NULL)
            return 0;
        int rc = check_take(w, v, "receiver");
        if (rc == 0 && w->store)
            *o = lc_value_take_receiver(v, NULL);
        return rc;
    }
    case 'F': {
        int *o = va_arg(w->ap, int *);
        if (v == NULL)
            return 0;
        if (v->type != LC_STREAM)
            return type_fail(w, "stream", v);
        if (o == NULL)
            return 0;
        int rc = check_take(w, v, "stream");
        if (rc == 0 && w->store)
            *o = lc_value_take_fd(v, NULL);
        return rc;
    }
    case 'v': {
        lc_value **o = va_arg(w->ap, lc_value **);
        if (v != NULL && w->store && o != NULL)
            *o = v;
        return 0;
    }
    case '[': {
        if (v != NULL && v->type != LC_ARRAY)
            return type_fail(w, "array", v);
        for (size_t i = 0;; i++) {
            char d = peek(w);
            if (d == '*') { /* extra elements accepted */
                w->pos++;
                peek(w);
                w->pos++;
                return 0;
            }
            if (d == ']') {
                w->pos++;
                if (v != NULL && i < v->len)
                    return fail(w, LC_ETYPE, "array has %" PRIu32 " elements, the format %zu", v->len, i);
                return 0;
            }
            lc_value *e = NULL;
            enter(w, depth, NULL, 0, i);
            if (v != NULL) {
                if (i >= v->len)
                    return fail(w, LC_ENOKEY, "missing array element");
                e = v->u.items[i];
            }
            int rc = unpack_value(w, e, depth + 1);
            if (rc != 0)
                return rc;
            w->nseg = depth;
        }
    }
    case '{': {
        if (v != NULL && v->type != LC_MAP)
            return type_fail(w, "map", v);
        for (;;) {
            char d = peek(w);
            if (d == '*') { /* extra keys are ignored anyway */
                w->pos++;
                peek(w);
                w->pos++;
                return 0;
            }
            if (d == '}') {
                w->pos++;
                return 0;
            }
            w->pos++; /* 's' */
            const char *key = va_arg(w->ap, const char *);
            size_t klen;
            if (take_char(w, '#'))
                klen = va_arg(w->ap, size_t);
            else
                klen = key != NULL ? strlen(key) : 0;
            bool optional = take_char(w, '?');
            if (key == NULL)
                return fail(w, LC_EINVAL, "NULL map key");
            enter(w, depth, key, klen, 0);
            lc_value *e = v != NULL ? map_find(v, key, klen) : NULL;
            if (v != NULL && e == NULL && !optional)
                return fail(w, LC_ENOKEY, "missing required key");
            int rc = unpack_value(w, e, depth + 1);
            if (rc != 0)
                return rc;
            w->nseg = depth;
        }
    }
    default: /* unreachable after syntax_value() */
        return unexpected(w, w->pos - 1, false);
    }
}

/* Clears the check pass's marks: every attachment value is in m->att. */
static void clear_marks(lc_msg *m)
{
    for (uint32_t i = 0; i < m->att_len; i++)
        m->att[i]->flags &= (uint8_t)~LC_VF_MARK;
}

LC_API int lc_vunpack_ex(lc_msg *m, lc_error *err, const char *fmt, va_list ap)
{
    lc_error local;
    lc_walk w;
    w.err = err != NULL ? err : &local;
    w.err->code = 0;
    w.err->text[0] = '\0';
    w.fmt = fmt;
    w.pos = 0;
    w.store = false;
    w.nseg = 0;
    w.code = 0;
    w.marks = 0;
    if (m == NULL)
        return fail(&w, LC_EINVAL, "NULL message");
    if (fmt == NULL)
        return fail(&w, LC_EINVAL, "NULL format");

    int rc = syntax_value(&w, 0);
    if (rc == 0 && peek(&w) != '\0')
        rc = fmt_fail(&w, w.pos, "more than one value at the top level");
    if (rc != 0)
        return rc;

    if (m->body != NULL)
        return fail(&w, LC_ETYPE, "message has an opaque body (%s)",
                    m->content_type != NULL ? m->content_type : "?");
    lc_value *root = lc_msg_root(m);

    /* Pass 1: check everything, store nothing. */
    w.pos = 0;
    va_copy(w.ap, ap);
    rc = unpack_value(&w, root, 0);
    va_end(w.ap);
    if (w.marks != 0)
        clear_marks(m);
    if (rc != 0)
        return rc;

    /* Pass 2: the same walk over the same arguments, now storing. */
    w.pos = 0;
    w.nseg = 0;
    w.store = true;
    va_copy(w.ap, ap);
    rc = unpack_value(&w, root, 0);
    va_end(w.ap);
    return rc;
}

LC_API int lc_unpack_ex(lc_msg *m, lc_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = lc_vunpack_ex(m, err, fmt, ap);
    va_end(ap);
    return rc;
}

LC_API int lc_unpack(lc_msg *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = lc_vunpack_ex(m, NULL, fmt, ap);
    va_end(ap);
    return rc;
}
