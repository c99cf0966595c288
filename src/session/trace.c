/*
 * trace.c - lc_options.trace (src/session): every frame a session sends and
 * receives, decoded, on stderr.
 */
#include "session_internal.h"

#include <stdio.h>

static const char *frame_name(int type)
{
    switch (type) {
    case LC_SPDY_DATA:          return "DATA";
    case LC_SPDY_SYN_STREAM:    return "SYN_STREAM";
    case LC_SPDY_SYN_REPLY:     return "SYN_REPLY";
    case LC_SPDY_RST_STREAM:    return "RST_STREAM";
    case LC_SPDY_SETTINGS:      return "SETTINGS";
    case LC_SPDY_PING:          return "PING";
    case LC_SPDY_GOAWAY:        return "GOAWAY";
    case LC_SPDY_HEADERS:       return "HEADERS";
    case LC_SPDY_WINDOW_UPDATE: return "WINDOW_UPDATE";
    default:                    return "UNKNOWN";
    }
}

/* One readable line per frame (a DATA frame once, at its first fragment). */
void lc__trace_frame(lc_session *s, const char *dir, const lc_spdy_frame *f)
{
    if (f->type == LC_SPDY_DATA && f->data_offset != 0)
        return;
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s", dir, frame_name(f->type));
    size_t len = n > 0 ? (size_t)n : 0;
#define TR(...)                                                                          \
    do {                                                                                 \
        if (len < sizeof line) {                                                         \
            int k = snprintf(line + len, sizeof line - len, __VA_ARGS__);                \
            len += k > 0 ? (size_t)k : 0;                                                \
        }                                                                                \
    } while (0)
    switch (f->type) {
    case LC_SPDY_DATA:
        TR(" stream=%u len=%u%s", f->stream_id, f->length, (f->flags & LC_SPDY_FLAG_FIN) ? " FIN" : "");
        break;
    case LC_SPDY_SYN_STREAM:
    case LC_SPDY_SYN_REPLY:
    case LC_SPDY_HEADERS:
        TR(" stream=%u%s {", f->stream_id, (f->flags & LC_SPDY_FLAG_FIN) ? " FIN" : "");
        for (size_t i = 0; i < f->n_headers; i++)
            TR("%s%.*s: %.*s", i ? ", " : "", (int)f->headers[i].name_len, f->headers[i].name,
               (int)f->headers[i].value_len, f->headers[i].value);
        TR("}");
        break;
    case LC_SPDY_RST_STREAM:
        TR(" stream=%u status=%u", f->stream_id, f->status);
        break;
    case LC_SPDY_SETTINGS:
        TR(" {");
        for (uint32_t i = 0; i < f->value && i < 16; i++) {
            lc_spdy_setting e;
            lc__spdy_setting_get(f, i, &e);
            TR("%s%#x: %u", i ? ", " : "", e.id, e.value);
        }
        TR("}");
        break;
    case LC_SPDY_PING:
        TR(" id=%u", f->value);
        break;
    case LC_SPDY_GOAWAY:
        TR(" last-good=%u status=%u", f->stream_id, f->status);
        break;
    case LC_SPDY_WINDOW_UPDATE:
        TR(" stream=%u delta=%u", f->stream_id, f->value);
        break;
    default:
        TR(" type=%u", f->raw_type);
        break;
    }
#undef TR
    s->opt.trace(s->opt.trace_ctx, line);
}

/* Parses bytes we are about to write and traces their frames. wmu held. */
void lc__trace_out(lc_session *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        lc_spdy_frame f;
        size_t used = 0;
        int rc = lc__spdy_decode(&s->trace_dec, p, n, &used, &f);
        p += used;
        n -= used;
        if (rc <= 0)
            return;
        lc__trace_frame(s, ">>", &f);
    }
}

