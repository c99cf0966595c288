/*
 * lchan.h - internals of the lchan command-line tool (tools/lchan), shared by
 * its subcommand files. Not installed; the tool uses only the public API of
 * libchan.h plus jansson for JSON.
 */
#ifndef LCHAN_TOOL_H
#define LCHAN_TOOL_H

#include <libchan.h>

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

/* Exit codes (documented in docs/lchan.1 and `lchan --help`). `lchan exec`
 * exits with the remote command's status instead when it got one. */
enum lx_exit {
    LX_OK = 0,
    LX_USAGE = 64,    /* bad command line: unknown command or option, missing argument */
    LX_JSON = 65,     /* the JSON argument does not parse or cannot be mapped */
    LX_URL = 66,      /* bad URL, or a scheme this build does not have */
    LX_CONNECT = 69,  /* cannot connect: refused, no such socket, unreachable, timed out */
    LX_INTERNAL = 70, /* unexpected failure (out of memory, a library call failed) */
    LX_LISTEN = 71,   /* cannot listen: address in use, permission, ... */
    LX_TIMEOUT = 75,  /* no (complete) reply within --timeout */
    LX_SESSION = 76,  /* the session ended early or the peer broke the protocol */
};

/* ---- errors and tracing (util.c) ---------------------------------------- */

extern bool lx_trace_on;    /* --trace */
extern bool lx_verbose;     /* serve -v: one log line per session / request */
extern const char *lx_cmd;  /* "send", "serve", ... for messages */

/* Prints "lchan: <text>" on stderr (one line) and exits with code. */
__attribute__((noreturn, format(printf, 2, 3))) void lx_die(int code, const char *fmt, ...);
/* Prints "lchan: <text>" on stderr (a warning; carries on). */
__attribute__((format(printf, 1, 2))) void lx_warn(const char *fmt, ...);
/* "[trace +0.012s] <text>" on stderr when --trace is on. */
__attribute__((format(printf, 1, 2))) void lx_trace(const char *fmt, ...);
/* Traces a message: "[trace ...] <where> <dir> <value>", the value as JSON with
 * channel ends and streams shown as <Sender>, <Receiver>, <stream:read>, ... */
void lx_trace_msg(const char *where, const char *dir, lc_msg *m);
/* Session options: defaults, plus the library's frame trace under --trace. */
void lx_session_options(lc_options *o);
/* Same for -v logging (always printed when lx_verbose). */
__attribute__((format(printf, 1, 2))) void lx_log(const char *fmt, ...);

/* The symbolic rendering used by tracing, as a malloc'ed string. */
char *lx_render(const lc_value *v);

/* A library error code as lower-case text ("connection refused"). */
const char *lx_errtext(int code, char *buf, size_t len);

/* Why a session ended, from lc_session_error(), as text. */
const char *lx_session_why(int code, char *buf, size_t len);
/* Set before dialing to count the frames the peer sends (lx_frames_in). */
extern bool lx_watch_peer;
unsigned long lx_frames_in(void);
/* Dials url with a 10 s deadline or exits with a one-line error. */
lc_session *lx_dial(const char *url);
/* Exit code for a failed lc_send / lc_recv on a session. */
int lx_session_exit(int code);

/* ---- byte pumps (util.c) -------------------------------------------------- */

/* Copies from one fd to another in a thread until EOF (or a write error),
 * then does what flags say. label names it in traces. It waits in poll() on
 * both fds and a stop pipe, so lx_pump_cancel ends it at once even while
 * `to` is full and its reader reads nothing: a `to` it may close or shut
 * down, or given LX_OWN_TO, is the caller's alone and is made non-blocking;
 * any other (our stdout, stderr) is left blocking and written in pieces that
 * poll() said fit; a write() that blocks all the same (two copies into one
 * pipe, a terminal) is interrupted by a private real-time signal that
 * lx_pump_cancel sends the copy thread. */
typedef struct lx_pump lx_pump;
enum {
    LX_CLOSE_FROM = 1,
    LX_CLOSE_TO = 2,
    LX_SHUT_TO = 4, /* shutdown(SHUT_WR): a socket's EOF */
    LX_OWN_TO = 8,  /* `to` is ours alone (the caller closes it): make it non-blocking */
};
/* How a copy ended: EOF on `from`; `to` refused a write (its reader went
 * away: bytes were lost); stopped by lx_pump_cancel. */
enum { LX_PUMP_EOF = 0, LX_PUMP_BROKEN = 1, LX_PUMP_STOPPED = 2 };
lx_pump *lx_pump_start(int from, int to, int flags, const char *label);
/* Waits for the copy to finish (EOF on `from`), frees it; returns LX_PUMP_*. */
int lx_pump_join(lx_pump *p);
/* Same, unless SIGINT/SIGTERM or timeout_ms (-1: none) comes first:
 * LX_ESTOPPED or LC_ETIMEDOUT, and p still runs (wait again or cancel it).
 * 0 and *result = LX_PUMP_* once it has finished (p freed). */
int lx_pump_wait(lx_pump *p, int64_t timeout_ms, int *result);
/* Stops a copy that may be blocked reading `from` (e.g. a terminal), then
 * joins; returns LX_PUMP_* (EOF or BROKEN if it had ended by itself). */
int lx_pump_cancel(lx_pump *p);
/* Writes all of buf (blocking). 0 or -1. */
int lx_write_all(int fd, const void *buf, size_t n);

/* ---- signals (util.c) ------------------------------------------------------ */

/* SIGINT/SIGTERM set lx_stop and make lx_stop_fd() readable: they are
 * blocked in every thread and taken by a thread of their own (call this
 * before starting any other). SIGPIPE ignored (children spawned by serve
 * --exec get the defaults and an empty mask back). */
void lx_signals_init(void);
extern atomic_int lx_stop; /* the signal's number once one came */
int lx_stop_fd(void);

/* Client commands (send, exec, bench) wait through these, so SIGINT/SIGTERM
 * ends any wait within 0.1 s: LX_ESTOPPED (a code of the tool, not of
 * libchan). Otherwise as lc_recv, lc_send, lc_select (timeouts in ms, -1:
 * none). */
#define LX_ESTOPPED (-20000)
int lx_stoppable_recv(lc_receiver *r, lc_msg **m, int64_t timeout_ms);
int lx_stoppable_send(lc_sender *s, lc_msg *m, int64_t timeout_ms);
int lx_stoppable_select(lc_case *cases, size_t n, int64_t timeout_ms);
/* Waits until one of fds (at most 7) is readable: 0, LC_ETIMEDOUT or
 * LX_ESTOPPED. */
int lx_wait_fds(const int *fds, int n, int64_t timeout_ms);
/* Monotonic milliseconds. */
int64_t lx_now_ms(void);
/* After a stop signal: closes s (when not NULL; at most 0.5 s) and exits with
 * 128 + the signal (130 for SIGINT, 143 for SIGTERM). Stop the byte pumps
 * first: a graceful close reads the streams this side sends to their end. */
__attribute__((noreturn)) void lx_exit_stopped(lc_session *s);

/* ---- JSON mapping (json.c, see docs/json-mapping.md) -------------------- */

/* What a JSON argument asked for besides plain data. */
typedef struct lx_reqplan {
    lc_receiver *replies[16]; /* one per "@reply": the tool prints what arrives */
    int nreplies;
    int stdin_fd;  /* our end to copy stdin into, or -1 */
    int stdout_fd; /* our end to copy to stdout from, or -1 */
    int stderr_fd; /* our end to copy to stderr from, or -1 */
    bool stdio_duplex; /* stdin_fd == stdout_fd: one duplex socket */
} lx_reqplan;

/* Parses text and builds a message. On failure: NULL, an explanation in err. */
lc_msg *lx_json_to_msg(const char *text, lx_reqplan *plan, char *err, size_t errlen);
/* Releases whatever a plan still holds (after a failed send). */
void lx_plan_free(lx_reqplan *plan);
/* Renders a value as compact JSON (malloc'ed; never NULL unless out of memory). */
char *lx_value_to_json(const lc_value *v);
/* The line for an opaque body: {"$body":{"type":"...","bytes":N}} (malloc'ed;
 * NULL when out of memory). */
char *lx_body_to_json(const char *ctype, size_t bytes);

/* ---- subcommands ------------------------------------------------------------ */

int lx_serve(int argc, char **argv);
int lx_send(int argc, char **argv);
int lx_exec(int argc, char **argv);
int lx_connect(int argc, char **argv);
int lx_bench(int argc, char **argv);

/* Command-line helpers (main.c). */
extern const char *const lx_help_serve, *const lx_help_send, *const lx_help_exec,
    *const lx_help_connect, *const lx_help_bench;
/* Handles --trace / --help / -h (prints help and exits 0); true if it did. */
bool lx_common_opt(const char *arg, const char *help);
/* Usage error: "lchan CMD: <text> (see lchan CMD --help)" and exit LX_USAGE. */
__attribute__((noreturn, format(printf, 1, 2))) void lx_usage(const char *fmt, ...);
/* Parses "--name=V" or "--name V" (advancing *i); false if arg is not --name. */
bool lx_opt_long(int argc, char **argv, int *i, const char *name, long long min, long long max,
                 long long *out);

#endif
