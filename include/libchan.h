/*
 * libchan.h - Go-style channels for C, in one process or across a network.
 *
 * This header is the whole public API and its manual. It is grouped by topic:
 *   1. errors            negative LC_E* codes and lc_strerror()
 *   2. messages          lc_msg: a value tree (or an opaque body) plus attachments
 *   3. building/reading  lc_pack()/lc_unpack() format strings, builder, getters
 *   4. msgpack           encoding a plain-data message to bytes and back
 *   5. channels          lc_pipe(), lc_send(), lc_recv(), lc_close(), lc_select()
 *   6. sessions          lc_dial(), lc_listen(), lc_accept(): channels over a network
 *
 * Conventions used everywhere:
 *   - A call that can fail returns int: 0 (or a non-negative result) on success,
 *     a negative LC_E* code on failure. lc_strerror(code) explains a code.
 *   - Timeouts are in milliseconds: 0 means "try once, do not block",
 *     -1 means "wait forever". An expired timeout returns LC_ETIMEDOUT.
 *   - "takes" means ownership passes to the callee; "borrowed" means the pointer
 *     stays owned by its container and is valid while the container lives.
 *   - Every handle (lc_sender, lc_receiver) is reference-counted and safe to use
 *     from any number of threads at once. An lc_msg is NOT thread-safe: one
 *     thread owns a message at a time (sending it hands it over).
 *   - fork() without exec: the child may use the library afresh (its own
 *     channels, sessions and listeners; the library starts its I/O thread
 *     anew there). What the parent had open is not usable in the child: the
 *     parent's threads, including the library's, do not exist there.
 */
#ifndef LIBCHAN_H
#define LIBCHAN_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LIBCHAN_BUILDING) && defined(__GNUC__)
#define LC_API __attribute__((visibility("default")))
#else
#define LC_API
#endif

#define LIBCHAN_VERSION_MAJOR 0
#define LIBCHAN_VERSION_MINOR 1
#define LIBCHAN_VERSION_PATCH 0

/* ========================================================================== */
/* 1. Errors                                                                   */
/* ========================================================================== */

/*
 * Error codes. Where a POSIX errno means the same thing, the code is its
 * negation (as in libuv); libchan's own conditions live below -1000.
 */
enum lc_error_code {
    LC_OK        = 0,
    LC_EINVAL    = -EINVAL,    /* bad argument (NULL handle, bad capacity, ...) */
    LC_ENOMEM    = -ENOMEM,    /* out of memory */
    LC_ETIMEDOUT = -ETIMEDOUT, /* the timeout expired (also for timeout 0) */
    LC_ECLOSED   = -EPIPE,     /* send on a closed channel, or no receiver is left */
    LC_EBADF     = -EBADF,     /* an attached file descriptor is not valid */
    LC_EOF       = -1001,      /* end of channel: closed and every message drained */
    LC_ETRUNCATED = -1002,     /* msgpack: input ends inside a value */
    LC_ETRAILING = -1003,      /* msgpack: bytes left after the message */
    LC_EDEPTH    = -1004,      /* msgpack: nesting deeper than the limit */
    LC_ETOOBIG   = -1005,      /* msgpack: a size (string, container, message) over the limit */
    LC_EBADMSG   = -1006,      /* msgpack: malformed input (reserved byte, bad ext) */
    LC_ETYPE     = -1007,      /* unpack: a value has another type than the format asks */
    LC_ENOKEY    = -1008,      /* unpack: a required map key is missing */
    LC_EFORMAT   = -1009,      /* pack/unpack: the format string is invalid */
    LC_ETAKEN    = -1010,      /* an attachment was already taken out of the message */
    LC_ERANGE    = -1011,      /* a number does not fit the requested C type; a session
                                  has used up its stream ids (lc_session_sender) */
    LC_ENOTSUP   = -1012,      /* the operation is not supported here (e.g. encoding an
                                  attachment without a session) */
    LC_EPROTO    = -1013,      /* the peer broke the wire protocol (malformed frame,
                                  bad header block, unknown reference): that session
                                  or stream is closed, the process carries on */
    LC_ESESSION  = -1014,      /* the session this channel belongs to has ended
                                  (carrier lost or closed); lc_session_error says why */
    LC_ENOHOST   = -1015       /* dial/listen: the URL's host name does not resolve
                                  (no such name, or no address for it) */
};

/* A static, human-readable description of an error code. Never NULL. */
LC_API const char *lc_strerror(int code);

/*
 * Detailed error for lc_pack_ex() / lc_unpack_ex(): the code, and a text that
 * names the path that failed, e.g. "Args[2]: expected string, got int".
 */
typedef struct lc_error {
    int code;
    char text[256];
} lc_error;

/* ========================================================================== */
/* 2. Messages                                                                 */
/* ========================================================================== */

typedef struct lc_msg lc_msg;           /* a message: one value tree or one body */
typedef struct lc_value lc_value;       /* a node of a message's value tree */
typedef struct lc_sender lc_sender;     /* the sending end of a channel */
typedef struct lc_receiver lc_receiver; /* the receiving end of a channel */

typedef enum lc_type {
    LC_NIL = 0,
    LC_BOOL,
    LC_INT,      /* int64_t */
    LC_UINT,     /* uint64_t above INT64_MAX (smaller non-negative numbers are LC_INT) */
    LC_DOUBLE,
    LC_STRING,   /* length-counted bytes, also NUL-terminated for convenience */
    LC_BINARY,
    LC_ARRAY,
    LC_MAP,      /* ordered key/value pairs; keys are usually strings */
    LC_TIME,     /* seconds + nanoseconds since the Unix epoch */
    LC_SENDER,   /* attachment: a channel end the receiver of the message sends on */
    LC_RECEIVER, /* attachment: a channel end the receiver of the message receives on */
    LC_STREAM    /* attachment: a byte stream, i.e. a file descriptor */
} lc_type;

/* What the holder of a byte stream may do with it (wire ext types 1, 3, 2). */
typedef enum lc_stream_mode {
    LC_STREAM_DUPLEX = 0, /* read and write (ext 1) */
    LC_STREAM_READ   = 1, /* the holder reads; the other side writes (ext 3) */
    LC_STREAM_WRITE  = 2  /* the holder writes; the other side reads (ext 2) */
} lc_stream_mode;

/* The name of a type ("nil", "bool", "int", ..., "stream"). Never NULL. */
LC_API const char *lc_type_name(lc_type t);

/*
 * Ownership of messages and what they carry:
 *   - The creator of a message owns it and frees it with lc_msg_free().
 *   - A message handed to a successful lc_send() (or a fired send case of
 *     lc_select()) belongs to the library; on failure it is still the caller's.
 *   - A message returned by lc_recv() belongs to the caller.
 *   - An attachment (Sender, Receiver, byte stream fd) put into a message
 *     belongs to the message. Whoever holds the message may take it out
 *     (lc_unpack with S/R/F, or lc_value_take_*), after which it belongs to the
 *     taker. Freeing a message releases every channel end and closes every fd
 *     still inside it, so an ignored attachment never leaks.
 */

/* A new empty message (root value nil). NULL when out of memory. */
LC_API lc_msg *lc_msg_new(void);

/* Frees a message, its values, and every attachment not taken out of it. NULL is a no-op. */
LC_API void lc_msg_free(lc_msg *m);

/* The root value (borrowed). Never NULL: a new message's root is nil.
 * A message made by lc_pack or received holds its msgpack bytes; the value
 * tree is built from them on the first call (lc_unpack reads the bytes
 * without it). Out of memory for that tree, it returns a shared nil of no
 * message (the bytes are kept: a later call tries again); to tell, use
 * lc_unpack(m, "v", &root), which fails with LC_ENOMEM then.
 * Not for two threads at once on the same message. */
LC_API lc_value *lc_msg_root(lc_msg *m);

/* Makes v (created in m) the root value. LC_EINVAL if v belongs to another message. */
LC_API int lc_msg_set_root(lc_msg *m, lc_value *v);

/*
 * Opaque bodies (pluggable serialization). A message may carry bytes with a
 * content type ("application/json", "application/protobuf", ...) instead of a
 * value tree; attachments ride along in an ordered list the body refers to by
 * index. lc_msg_set_body copies the bytes. lc_msg_body returns NULL when the
 * message has a value tree instead of a body.
 */
LC_API int lc_msg_set_body(lc_msg *m, const void *data, size_t len, const char *content_type);
LC_API const void *lc_msg_body(const lc_msg *m, size_t *len, const char **content_type);
/* Appends an attachment value (created in m with lc_new_sender/receiver/stream);
 * returns its index (>= 0) or a negative error. */
LC_API int lc_msg_attach(lc_msg *m, lc_value *attachment);
LC_API size_t lc_msg_attachment_count(const lc_msg *m);
LC_API lc_value *lc_msg_attachment(lc_msg *m, size_t index); /* borrowed; NULL if out of range */

/* ========================================================================== */
/* 3. Building and reading values                                              */
/* ========================================================================== */

/*
 * Format strings (jansson style), shared by lc_pack and lc_unpack.
 *
 *   fmt   value        lc_pack arguments          lc_unpack arguments
 *   n     nil          -                          -
 *   B     bool         int                        bool *
 *   i     int          int                        int *          (LC_ERANGE if it does not fit)
 *   I     int          int64_t                    int64_t *
 *   U     uint         uint64_t                   uint64_t *     (negative -> LC_ERANGE)
 *   f     double       double                     double *       (ints are converted)
 *   s     string       const char * (NUL-term.)   const char **  (borrowed from the message)
 *   s#    string       const char *, size_t       const char **, size_t *
 *   b     binary       const void *, size_t       const void **, size_t *  (borrowed)
 *   t     time         int64_t sec, int nsec      int64_t *sec, int *nsec
 *   S     Sender       lc_sender * (taken)        lc_sender **   (taken out of the message)
 *   R     Receiver     lc_receiver * (taken)      lc_receiver ** (taken out of the message)
 *   F     byte stream  int fd (taken), duplex     int *fd        (taken out of the message)
 *   v     any value    -                          lc_value **    (borrowed)
 *   [...] array        elements                   elements (exactly that many, unless '*')
 *   {...} map          s: key then value          key (const char *) then value
 *
 * In lc_unpack, a map key followed by '?' ("{s?i}") is optional: a missing key
 * leaves the output untouched. A '*' before the closing '}' or ']' accepts
 * extra keys or elements; without it extra array elements are an error and
 * extra map keys are ignored. Whitespace, ',' and ':' are ignored.
 * A map key may also be "s#" (const char *, size_t). In lc_unpack a NULL
 * output pointer checks the value without storing it (S/R/F stay in the
 * message); an array shorter than the format is LC_ENOKEY, a longer one
 * (without '*') LC_ETYPE. Formats nest at most 64 levels (LC_EFORMAT).
 *
 * lc_pack takes attachments (S, R, F) even when it fails: they are released
 * or closed then, so the caller never has to track them. (Exception: when the
 * format itself is malformed, the arguments after the error cannot be decoded,
 * so attachments among them are not released.) A NULL string, key, S or R is
 * LC_EINVAL, except a NULL with length 0 for s# (value or key) and b, which
 * is the empty one; an F that is not an open fd is LC_EBADF and is not
 * closed.
 * lc_unpack checks the whole format first and only then stores outputs and
 * takes attachments: on failure nothing is stored and nothing is taken.
 */

/* Builds a message from a format. NULL on failure (see lc_pack_ex for why). */
LC_API lc_msg *lc_pack(const char *fmt, ...);
LC_API lc_msg *lc_pack_ex(lc_error *err, const char *fmt, ...);
LC_API lc_msg *lc_vpack_ex(lc_error *err, const char *fmt, va_list ap);

/* Reads a message's root value by format. 0 or a negative error (LC_ETYPE,
 * LC_ENOKEY, LC_ERANGE, LC_ETAKEN, LC_EFORMAT, LC_EINVAL, LC_ENOMEM when the
 * value tree cannot be built). Opaque-body messages cannot be unpacked (LC_ETYPE). */
LC_API int lc_unpack(lc_msg *m, const char *fmt, ...);
LC_API int lc_unpack_ex(lc_msg *m, lc_error *err, const char *fmt, ...);
LC_API int lc_vunpack_ex(lc_msg *m, lc_error *err, const char *fmt, va_list ap);

/*
 * Explicit builder. Every lc_new_* allocates a value inside message m (freed
 * with it); it returns NULL when out of memory. A value may be placed once,
 * as the root or inside an array/map of the same message.
 */
LC_API lc_value *lc_new_nil(lc_msg *m);
LC_API lc_value *lc_new_bool(lc_msg *m, bool b);
LC_API lc_value *lc_new_int(lc_msg *m, int64_t i);
LC_API lc_value *lc_new_uint(lc_msg *m, uint64_t u);
LC_API lc_value *lc_new_double(lc_msg *m, double d);
LC_API lc_value *lc_new_string(lc_msg *m, const char *s);                 /* copies */
LC_API lc_value *lc_new_stringn(lc_msg *m, const char *s, size_t len);    /* copies */
LC_API lc_value *lc_new_binary(lc_msg *m, const void *data, size_t len);  /* copies */
LC_API lc_value *lc_new_time(lc_msg *m, int64_t sec, uint32_t nsec);
LC_API lc_value *lc_new_array(lc_msg *m);
LC_API lc_value *lc_new_map(lc_msg *m);
/* Attachments: these take the reference / the fd, even when they fail. A
 * Sender sent over a session keeps the reference the message took until the
 * peer closes or releases its end (one and the same on the wire): then it is
 * released, and the channel ends with its last reference, as in memory (a
 * Sender also handed elsewhere, or kept, stays open). An error on the way
 * (the peer reset it, the session ended) closes the channel with that error. */
LC_API lc_value *lc_new_sender(lc_msg *m, lc_sender *s);
LC_API lc_value *lc_new_receiver(lc_msg *m, lc_receiver *r);
LC_API lc_value *lc_new_stream(lc_msg *m, int fd, lc_stream_mode mode);

/* Appends v to array arr (both in m). */
LC_API int lc_array_append(lc_msg *m, lc_value *arr, lc_value *v);
/* Appends the pair (key, v) to map; the string key is copied. Does not check
 * for duplicate keys (lookups return the first). */
LC_API int lc_map_set(lc_msg *m, lc_value *map, const char *key, lc_value *v);
/* Same with any value as the key (both in m). */
LC_API int lc_map_set_value(lc_msg *m, lc_value *map, lc_value *key, lc_value *v);

/* Getters for code that walks unknown messages. On a value of another type
 * they return 0 / NULL / false; check lc_value_type first. */
LC_API lc_type lc_value_type(const lc_value *v);
LC_API bool lc_value_bool(const lc_value *v);
LC_API int64_t lc_value_int(const lc_value *v);     /* LC_INT, or LC_UINT that fits */
LC_API uint64_t lc_value_uint(const lc_value *v);   /* LC_UINT, or LC_INT >= 0 */
LC_API double lc_value_double(const lc_value *v);   /* LC_DOUBLE, or an integer converted */
LC_API const char *lc_value_string(const lc_value *v, size_t *len); /* borrowed */
LC_API const void *lc_value_binary(const lc_value *v, size_t *len); /* borrowed */
LC_API bool lc_value_time(const lc_value *v, int64_t *sec, uint32_t *nsec);
LC_API size_t lc_value_len(const lc_value *v); /* array/map entries, string/binary bytes */
LC_API lc_value *lc_array_get(const lc_value *arr, size_t i);       /* borrowed; NULL if out of range */
LC_API lc_value *lc_map_get(const lc_value *map, const char *key);  /* borrowed; first match or NULL */
LC_API lc_value *lc_map_key(const lc_value *map, size_t i);         /* i-th pair's key */
LC_API lc_value *lc_map_value(const lc_value *map, size_t i);       /* i-th pair's value */
/* The stream's mode, without taking it. */
LC_API lc_stream_mode lc_value_stream_mode(const lc_value *v);
/* True when the attachment has been taken out already. */
LC_API bool lc_value_taken(const lc_value *v);

/* Take an attachment out of its message: the caller then owns the reference
 * (release it) or the fd (close it). NULL / -1 with *err set (if err is not
 * NULL) to LC_ETYPE or LC_ETAKEN. */
LC_API lc_sender *lc_value_take_sender(lc_value *v, int *err);
LC_API lc_receiver *lc_value_take_receiver(lc_value *v, int *err);
LC_API int lc_value_take_fd(lc_value *v, int *err);

/* ========================================================================== */
/* 4. msgpack                                                                  */
/* ========================================================================== */

/*
 * Encoding of plain-data messages as msgpack (the libchan wire format, see
 * docs/PROTOCOL.md). Attachments can only be encoded by a session (they become
 * sub-streams); here they fail with LC_ENOTSUP. Decoding is strict: truncated
 * input, trailing bytes, nesting deeper than max_depth and sizes over the
 * limits each fail with their own code.
 */
typedef struct lc_limits {
    uint32_t max_depth;     /* nesting of arrays/maps (default 64, at most 4096:
                             * a larger value means 4096) */
    uint64_t max_message;   /* bytes of one encoded message (default 64 MiB) */
    uint32_t max_elements;  /* entries of one array or map (default 1M) */
} lc_limits;

/* Fills *l with the defaults above. */
LC_API void lc_limits_default(lc_limits *l);

/* Encodes m into a new malloc'ed buffer (*out, free() it) of *len bytes.
 * A message with an opaque body is encoded as ext 7 (libchan-C's own, see
 * docs/codec.md). */
LC_API int lc_msgpack_encode(const lc_msg *m, uint8_t **out, size_t *len);
/* Decodes exactly one message from data[0..len). limits may be NULL (defaults);
 * a zero field of *limits means its default. A reference to a channel or byte
 * stream (ext 1..5) needs a session and fails here with LC_ENOTSUP. */
LC_API int lc_msgpack_decode(const void *data, size_t len, const lc_limits *limits, lc_msg **out);

/* ========================================================================== */
/* 5. Channels                                                                 */
/* ========================================================================== */

/*
 * Creates an in-memory channel and returns its two ends, one reference each.
 * capacity 0 is unbuffered: a send completes only when a receiver takes the
 * message (a rendezvous, as in Go). capacity > 0 buffers that many messages.
 * Messages are passed by pointer: no copy, no encoding, exactly-once delivery,
 * in order.
 *
 * Lifetime: when the last reference to the Sender is released, the channel is
 * closed (receivers drain, then get LC_EOF). When the last reference to the
 * Receiver is released, queued messages are freed and senders get LC_ECLOSED.
 */
LC_API int lc_pipe(lc_receiver **r, lc_sender **s, size_t capacity);

LC_API lc_sender *lc_sender_retain(lc_sender *s);       /* +1 reference; returns s */
LC_API void lc_sender_release(lc_sender *s);            /* -1 reference; NULL is a no-op */
LC_API lc_receiver *lc_receiver_retain(lc_receiver *r); /* +1 reference; returns r */
LC_API void lc_receiver_release(lc_receiver *r);        /* -1 reference; NULL is a no-op */

/*
 * Sends m. On success (0) the message belongs to the library; on failure it is
 * still the caller's. Blocks until a receiver takes it (unbuffered), or until
 * there is room (buffered), at most timeout_ms. Errors: LC_ECLOSED (channel
 * closed, or every Receiver released), LC_ETIMEDOUT, LC_EINVAL. On a network
 * Sender also: LC_ESESSION (the session ended), LC_ETAKEN (an attachment was
 * taken out of the message), LC_EINVAL (one fd twice in the message),
 * LC_ENOTSUP (a byte stream the session cannot pump, see section 6),
 * LC_ERANGE (the session's stream ids are used up).
 */
LC_API int lc_send(lc_sender *s, lc_msg *m, int64_t timeout_ms);

/*
 * Sends m as the channel's last message: lc_send, then lc_close, in one step.
 * Nothing another Sender of the channel sends can come after m: the channel
 * closes as m is taken (those sends fail with LC_ECLOSED). On a network
 * channel the message and the end of the channel travel in one frame, so a
 * server answering on a fresh reply channel makes one write per reply
 * instead of two, and the end is never held back (see lc_close). On success
 * the channel is closed (release the Sender as usual); on failure nothing is
 * closed and m is still the caller's. Errors as lc_send.
 */
LC_API int lc_send_last(lc_sender *s, lc_msg *m, int64_t timeout_ms);

/*
 * Receives the next message into *m (the caller owns it). Blocks at most
 * timeout_ms. Returns LC_EOF once the channel is closed and drained, or
 * LC_ETIMEDOUT.
 *
 * On a channel a session fills (a network Receiver, or a channel whose
 * Sender was sent over a session) a message is taken as it arrives: the
 * receiving thread of a buffered channel reads the session's carrier itself
 * while no other thread does, and otherwise the session's engine reads it
 * for as long as the call waits. A poll (timeout 0) that finds nothing has
 * the engine read what comes next, for the next poll. The same holds for
 * lc_select and the pollable fds, and for a send that waits for a network
 * Sender's window.
 */
LC_API int lc_recv(lc_receiver *r, lc_msg **m, int64_t timeout_ms);

/*
 * Closes the channel: later sends fail with LC_ECLOSED; receivers get what is
 * queued, then LC_EOF. Every blocked sender and receiver wakes at once (blocked
 * senders fail with LC_ECLOSED: their messages stay theirs). Does not release
 * the reference. A second close returns LC_ECLOSED.
 *
 * On a network channel the end is written at once, except right after the
 * closing thread answered a message it read from that session: a write
 * landing while the requester reads the reply holds that read back (0.5-1.2
 * us per round trip on a unix socket, bench_session), so the end then waits
 * about 1 us, for the session's next read, its next write or the thread
 * going back to lc_recv; 4 ms at most if no thread reads the session.
 * lc_send_last sends a reply and the end together and never waits.
 */
LC_API int lc_close(lc_sender *s);

/* One case of lc_select(). */
typedef enum lc_case_op { LC_CASE_SEND = 1, LC_CASE_RECV = 2 } lc_case_op;
typedef struct lc_case {
    lc_case_op op;
    lc_sender *sender;     /* LC_CASE_SEND: the channel to send on */
    lc_receiver *receiver; /* LC_CASE_RECV: the channel to receive from */
    lc_msg *msg;           /* SEND: the message (taken if the case fires with 0);
                              RECV: set to the received message when it fires */
    int result;            /* set for the fired case: 0, LC_EOF (recv, closed),
                              or LC_ECLOSED (send, closed) */
} lc_case;

/*
 * Waits until exactly one case can proceed, performs it, and returns its index.
 * When several are ready, one is chosen at random (fair: no case starves).
 * A receive case on a closed, drained channel fires with result LC_EOF; a send
 * case on a closed channel fires with result LC_ECLOSED (its message is not
 * taken). Returns LC_ETIMEDOUT if none could proceed in timeout_ms, LC_EINVAL
 * for a malformed case. Cases with a NULL channel are ignored (as a nil channel
 * in Go). The same channel may appear in several cases. With no case on a
 * channel and no timeout (Go's empty select, blocking for ever), LC_EINVAL.
 */
LC_API int lc_select(lc_case *cases, size_t n, int64_t timeout_ms);

/*
 * Pollable file descriptors, for epoll/poll/libuv loops. The fd is readable
 * (level-triggered) while lc_recv (resp. lc_send) would not block: a message is
 * queued, a sender is waiting (unbuffered), or the channel is closed (resp.
 * there is room, a receiver is waiting, or the channel is closed). The fd is
 * an eventfd owned by the channel: do not read, write or close it; it stays
 * valid while the caller holds the handle. Readiness is a hint: another
 * thread may win the race, so use timeout 0 and handle LC_ETIMEDOUT. (A
 * network Sender's fd learns that its window or its session's output filled
 * up from the try that returns LC_ETIMEDOUT: the next poll then waits for
 * room. So does the first message passing an fd on a unix session, which
 * waits one round trip for the peer to read fds, and before that for the
 * peer's first frame if it was not read yet: PROTOCOL.md 7.)
 * Returns the fd, or a negative error.
 */
LC_API int lc_receiver_pollfd(lc_receiver *r);
LC_API int lc_sender_pollfd(lc_sender *s);

/* Number of messages queued in a buffered channel now (a snapshot). */
LC_API size_t lc_receiver_queued(lc_receiver *r);

/* ========================================================================== */
/* 6. Sessions: channels over a network carrier                                */
/* ========================================================================== */

/*
 * A session is one carrier connection (unix socket, TCP) speaking the libchan
 * protocol of docker/libchan: SPDY/3 streams carrying msgpack messages (see
 * docs/PROTOCOL.md). Either side opens channels on it: lc_session_sender
 * opens one and returns its Sender; the other side gets the matching
 * Receiver from lc_session_receiver. Messages sent on a network Sender may
 * carry Senders and Receivers (in-memory ones, or ends of any session): the
 * session opens a sub-stream for each and forwards, so the receiving program
 * gets working channel ends, nested without limit.
 *
 * Byte streams (lc_new_stream) travel as the fd itself between two libchan
 * sessions on a unix socket (SCM_RIGHTS; an fd sent but not written yet when
 * the session ends is closed then, with its message lost); a message carrying
 * them that is sent before the session has read the peer's first frame
 * (right after lc_dial, say) waits for that frame to learn whether the peer
 * takes fds, at most one second per session (docs/PROTOCOL.md 7); a peer
 * that has not spoken by then gets sub-streams. Otherwise they travel as a
 * sub-stream the sessions pump: the sending side reads and writes the fd it
 * was given (made O_NONBLOCK), the receiving program gets one end of a
 * socketpair. A
 * regular file is pumped too, from its current offset: read to its end (then
 * EOF for the holder), or written with what the holder writes (reads and
 * writes of it may block the session's I/O thread while the disk is slow).
 * A directory fails lc_send with LC_ENOTSUP, the message still the
 * caller's. A
 * channel end or byte stream whose sub-stream the sending side ended with an
 * error before the message arrived comes already ended: a Sender whose
 * sends fail with LC_ECLOSED, a Receiver that reports LC_ECLOSED, an fd
 * whose other end is closed; the message and its channel go on. A
 * pipe a session reads this way gets 256 KiB of capacity (F_SETPIPE_SZ, for
 * fewer wake-ups; at most 16 pipes of the process at a time). For bulk data
 * over TCP, send the end of a socketpair rather than a pipe: the session
 * reads it faster (bench_session tcp bulk on a 2-core VM: ~3900 against
 * ~3300 MB/s as the kernel places the threads).
 *
 * Network channel ends are ordinary lc_sender / lc_receiver handles: lc_send,
 * lc_recv, lc_select, lc_close and pollable fds work on them, mixed with
 * in-memory ones. A network Receiver is a local queue the session fills;
 * lc_send on a network Sender encodes and writes on the calling thread.
 * Messages sent back to back are batched instead (one write per batch, by
 * the session's thread): the last of a short burst is held back at most
 * 20 us, the last of a sustained flood at most 100 us, then written as soon
 * as the carrier takes it; a reply to a message just received is written at
 * once.
 *
 * A message carrying channel ends or byte streams over a session that has
 * used up its stream ids (see lc_session_sender) is not sent: lc_send
 * returns LC_ERANGE and the message stays the caller's.
 *
 * Delivery: on one channel, in order and without duplicates. When the
 * carrier is lost, every blocked call on the session's channels returns at
 * once: receivers get LC_ESESSION after the messages that had reached this
 * side (LC_EOF for a channel the peer had closed before), senders get
 * LC_ESESSION; messages in flight may be lost. After a peer's graceful
 * lc_session_close, the messages that reached this side keep the channel
 * ends and byte streams they carry (each still brings what the peer had
 * sent on it, then its end; byte streams: the first 128 of those behind a
 * channel's queue, each a socketpair until received, docs/PROTOCOL.md 2.5).
 *
 * A misbehaving peer is bounded: bad frames end its session (LC_EPROTO) or
 * the stream concerned; answers it never reads, windows it overruns, fds
 * and sub-streams no message names and streams it never ends are each
 * capped (docs/PROTOCOL.md 2.5 lists the limits and what happens past them).
 *
 * URLs: "unix:///absolute/path" and "tcp://host:port" (port 0 to listen on
 * any free port; lc_listener_url tells which). An IPv6 host goes in
 * brackets ("tcp://[::1]:9000"), a link-local one with its interface
 * ("tcp://[fe80::1%eth0]:9000"); an empty host ("tcp://:9000") listens on
 * every address, IPv6 and IPv4 (where the machine has IPv6; IPv4 only
 * otherwise), and dials the loopback address.
 *
 * Sessions share one internal thread that waits for their sockets with
 * epoll. LIBCHAN_ENGINE=poll in the environment (read when that thread
 * starts, with the first session) makes it use poll(2); it does so by itself
 * where epoll is refused (seccomp filters, emulators). =epoll forces epoll.
 */
typedef struct lc_session lc_session;
typedef struct lc_listener lc_listener;

typedef struct lc_options {
    int64_t dial_timeout_ms;  /* lc_dial: default 10000; negative: no limit. As for
                                 every field here, 0 means the default. */
    int64_t ref_timeout_ms;   /* a message naming a sub-stream that has not arrived
                                 waits this long, then fails with LC_EPROTO (default 5000) */
    uint32_t recv_queue;      /* messages queued per network Receiver (default
                                 256); past it the channel's messages wait
                                 unread, behind the window below. With that
                                 window, this bounds what an unread channel
                                 holds: recv_queue messages of up to
                                 limits.max_message bytes, plus one window
                                 (of which up to min(32, recv_queue) messages
                                 decoded ahead); lower it for channels of large
                                 messages. Memory: a message that carries
                                 channels, byte streams or float32 values is
                                 held decoded, as values, which costs up to
                                 ~50 bytes per byte of a message made of tiny
                                 elements (others stay as their bytes) */
    uint32_t accept_queue;    /* channels opened by the peer waiting for
                                 lc_session_receiver (default 1024). A channel
                                 that finds it full is dropped: its messages are
                                 discarded, and the peer is not told (as Go,
                                 docs/PROTOCOL.md 3.1); the same holds for a
                                 network Receiver the application releases (3.9) */
    size_t max_pending_out;   /* bytes queued for the carrier before lc_send blocks
                                 (default 4 MiB) */
    uint32_t stream_window;   /* bytes a peer of ours may send on one channel beyond
                                 what the Receiver's local queue holds (SPDY/3
                                 window, granted back as messages enter that
                                 queue, or as a byte stream's bytes reach its
                                 fd; default 4 MiB, which a byte stream over
                                 TCP needs to keep moving). Go peers do not
                                 use windows: toward them, the channels whose
                                 queue is full may hold this many bytes
                                 together before the session stops reading
                                 the carrier for every channel
                                 (docs/PROTOCOL.md 6.3). */
    lc_limits limits;         /* msgpack limits for received messages (0 = defaults) */
    /* Debugging: when set, called with one readable line for every SPDY frame
     * the session sends (">> ...") or receives ("<< ..."), e.g.
     * "<< SYN_STREAM stream=1 {libchan-ref: 2}". Called on internal threads
     * with session locks held: it must return quickly and must not call into
     * libchan. Tracing costs a second parse of the outgoing bytes. */
    void (*trace)(void *ctx, const char *line);
    void *trace_ctx;
} lc_options;

/* Fills *o with the defaults above. A NULL lc_options means the defaults. */
LC_API void lc_options_default(lc_options *o);

/* Dials url and returns a session (the client side). Blocks at most
 * o->dial_timeout_ms, name lookup included (a tcp:// host name is looked up
 * on a helper thread; one given up on ends there by itself, within the
 * resolver's own timeouts). Dials of a name already being looked up wait
 * for that lookup; at most 64 names are looked up at once, past that a
 * dial fails at once with -EAGAIN. err (may be NULL) gets a text saying
 * what failed, e.g.
 * "tcp://localhost: missing port". Errors: LC_EINVAL (bad URL), LC_ENOTSUP
 * (scheme not built), LC_ENOHOST (the host name does not resolve), -EAGAIN
 * (name resolution failed for now), -ECONNREFUSED, -EHOSTUNREACH,
 * LC_ETIMEDOUT, ... */
LC_API int lc_dial(const char *url, const lc_options *o, lc_session **out, lc_error *err);

/* Listens on url. Each accepted connection is its own session. On a unix
 * path where something is listening, -EADDRINUSE; a stale socket file left
 * by a dead listener is replaced; a path that is some other file (never
 * removed) gives -ENOTSOCK. Whether a socket file is live is asked of the
 * kernel (sock_diag), so the live listener's lc_accept sees nothing of a
 * failed lc_listen; where it cannot be asked, or finds no listener in this
 * network namespace, lc_listen connects to find out (and hangs up). Listens
 * on one path that race (threads, or processes using libchan) take turns
 * under an flock on the socket's directory: one wins, the others get
 * -EADDRINUSE (a fork() meanwhile waits for the turn to end, so that no
 * child inherits the lock). The socket file of a relative path is the one
 * in the working directory of lc_listen: lc_listener_close removes that
 * one after a chdir too. A tcp:// host name is
 * resolved without a time limit here (there is no timeout to keep). */
LC_API int lc_listen(const char *url, const lc_options *o, lc_listener **out, lc_error *err);
/* The URL the listener is bound to (with the real port for tcp://...:0,
 * and the interface of a link-local IPv6 address: "%eth0", or its index
 * when it has no name). LC_ERANGE when it does not fit in len bytes with
 * its NUL. */
LC_API int lc_listener_url(lc_listener *l, char *buf, size_t len);
/* Accepts one connection as a session (the server side), waiting at most
 * timeout_ms. Connections that hung up (closed or reset) before sending
 * anything are skipped.
 * LC_ECLOSED once lc_listener_shutdown (or lc_listener_close) has been
 * called, also when it comes while this call waits. */
LC_API int lc_accept(lc_listener *l, lc_session **out, int64_t timeout_ms);
/* Stops listening, from any thread: the listening socket is closed (a unix
 * socket file is removed), threads waiting in lc_accept return LC_ECLOSED
 * (it waits until they have left), and every later lc_accept returns
 * LC_ECLOSED at once, lc_listener_url too. The listener stays allocated until
 * lc_listener_close. This is how an accept loop on another thread is told to
 * stop, whatever that thread is doing at the moment:
 *
 *     loop thread:  while (lc_accept(l, &s, -1) == 0) serve(s);
 *     to stop it:   lc_listener_shutdown(l); pthread_join(loop, NULL);
 *                   lc_listener_close(l);
 *
 * Calling it again does nothing. Sessions already accepted are not affected. */
LC_API void lc_listener_shutdown(lc_listener *l);
/* Shuts the listener down (lc_listener_shutdown) if that was not done, and
 * frees it. No call on l may start after it returns: an accept loop that may
 * still call lc_accept is stopped with lc_listener_shutdown, and the listener
 * closed once the loop has ended. NULL is a no-op. */
LC_API void lc_listener_close(lc_listener *l);

/* Opens a new channel on the session and returns its Sender (one reference).
 * The peer receives the matching Receiver through lc_session_receiver.
 * LC_ESESSION once the session has ended or lc_session_close has begun;
 * LC_ECLOSED once the peer said it is going away (GOAWAY); LC_ERANGE once
 * this side has opened 2^30 streams on the session (SPDY/3 stream ids are
 * 31 bits and never reused; every channel end or byte stream a message
 * carries opens one): dial a new session. */
LC_API int lc_session_sender(lc_session *s, lc_sender **out);
/* Waits for the next channel the peer opened and returns its Receiver (one
 * reference). LC_ETIMEDOUT, or LC_ESESSION once the session has ended. */
LC_API int lc_session_receiver(lc_session *s, lc_receiver **out, int64_t timeout_ms);

/*
 * Graceful close: reads the byte streams this side sends to their end,
 * pumps what the Receivers this side sent still hold (messages put into
 * them before the call), writes everything already sent (messages, stream
 * bytes, FINs), waits for the peer to have answered every channel this side
 * opened (a Go peer drops the messages of a channel it had not answered
 * when it reads the GOAWAY), then tells the peer (GOAWAY), half-closes the
 * carrier and waits for the peer to hang up, so nothing either side wrote
 * is cut off by a reset. Returns 0 when everything sent before the call
 * reached the carrier within timeout_ms, or an error saying it did not
 * (LC_ETIMEDOUT, or the session's error), or LC_ECLOSED when the peer
 * refused a channel this side had sent on (it was closing itself: what
 * lc_send had accepted on it was dropped); a peer slow to hang up after that
 * is not an error (while reading is paused, what the peer still sends is
 * read and dropped meanwhile: the session ends anyway). From its
 * start, lc_send on the session's Senders is refused (LC_ESESSION); a
 * message another thread's lc_send had already accepted is written before
 * the GOAWAY, with the byte streams it carries: never accepted and dropped.
 * Channel ends of the session stay valid handles and fail with LC_ESESSION
 * (lc_close of one of its Senders still succeeds: it closes the local end).
 * A second call (another thread's) waits for the first and returns what it
 * returns. Does not free the session.
 */
LC_API int lc_session_close(lc_session *s, int64_t timeout_ms);
/* The session's first fatal error (0 while healthy): LC_ESESSION for a
 * clean end by the peer, LC_EPROTO for a peer that broke the protocol, an
 * errno code for a carrier failure. */
LC_API int lc_session_error(lc_session *s);
/* Releases the session handle. An open session is closed abruptly (use
 * lc_session_close first to flush). Its channel ends stay valid handles.
 * The messages that reached its channels are still received, up to the
 * first one not yet in its channel's queue that carries channel ends or
 * byte streams: that one and those behind it are lost (their ends can no
 * longer be bound), and the channel ends with LC_ESESSION.
 * Threads blocked in lc_session_receiver on it return LC_ESESSION; one
 * blocked in lc_session_close returns at once: LC_ESESSION while what it had
 * to send was not all written (or a channel it opened not yet answered),
 * 0 when only the peer's hang-up was awaited. No call on the handle may
 * start once this one has begun.
 * A process may also simply exit() with sessions open and threads using
 * them: the library then leaves its I/O thread to the process's end (what
 * was not flushed is lost, as with any socket the kernel closes). */
LC_API void lc_session_free(lc_session *s);

#ifdef __cplusplus
}
#endif
#endif /* LIBCHAN_H */
