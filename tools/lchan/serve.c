/*
 * serve.c - `lchan serve URL --echo | --exec | --gateway`: a listener whose
 * sessions are answered by one built-in service. A thread per session waits
 * for the channels its peer opens, a thread per channel receives its
 * messages; work that blocks (a command, a tunnel, a stream copy) gets a
 * thread of its own. Every thread is counted so SIGINT/SIGTERM can stop the
 * server cleanly: close the listener, close each session gracefully, end the
 * running commands, wait for the threads.
 */
#include "lchan.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef enum { SV_ECHO, SV_EXEC, SV_GATEWAY } svc_kind;
static svc_kind svc;

/* ---- counted threads, live sessions and children (for a clean stop) ---------- */

typedef struct sess_rec {
    lc_session *s;
    int id;
    int jobs;               /* mu: its channel and command threads still running */
    struct sess_rec *next;
} sess_rec;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t jobs_cv = PTHREAD_COND_INITIALIZER; /* a session's job ended */
static pthread_cond_t kill_cv = PTHREAD_COND_INITIALIZER; /* SIGKILL went to a group */
static int active;          /* counted threads running */
static sess_rec *sessions;  /* sessions whose thread is still running */
/* running commands (pid 0: a free slot), with the session that asked for
 * each one and whether that session waits for its status. termed: SIGTERM
 * went to its group (its end asked for: the SIGKILL follows), killed: SIGKILL
 * did. A command that has exited but was termed and not killed stays here,
 * unreaped, while others of its group run (see reap_child). */
static struct child {
    pid_t pid;
    sess_rec *rec;
    bool awaited;
    bool termed, killed;
} children[256];
static atomic_int next_session_id = 1;

#define CLOSE_MS 2000 /* a session's graceful close when stopping (all at once) */

typedef struct job {
    void *(*fn)(void *);
    void *arg;
    sess_rec *rec; /* the session the job works for (counted in its jobs), or NULL */
} job;

static void *job_main(void *x)
{
    job j = *(job *)x;
    free(x);
    j.fn(j.arg);
    pthread_mutex_lock(&mu);
    if (j.rec != NULL && --j.rec->jobs == 0)
        pthread_cond_broadcast(&jobs_cv);
    if (--active == 0)
        pthread_cond_broadcast(&idle_cv);
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* Runs fn(arg) on a detached, counted thread (counted for rec too, when
 * not NULL). false if it could not start. */
static bool spawn_job_for(sess_rec *rec, void *(*fn)(void *), void *arg)
{
    job *j = malloc(sizeof *j);
    if (j == NULL)
        return false;
    j->fn = fn;
    j->arg = arg;
    j->rec = rec;
    pthread_mutex_lock(&mu);
    active++;
    if (rec != NULL)
        rec->jobs++;
    pthread_mutex_unlock(&mu);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&(pthread_t){ 0 }, &at, job_main, j);
    pthread_attr_destroy(&at);
    if (rc != 0) {
        free(j);
        pthread_mutex_lock(&mu);
        if (rec != NULL && --rec->jobs == 0)
            pthread_cond_broadcast(&jobs_cv);
        if (--active == 0)
            pthread_cond_broadcast(&idle_cv);
        pthread_mutex_unlock(&mu);
        lx_warn("serve: cannot start a thread: %s", strerror(rc));
        return false;
    }
    return true;
}

static bool spawn_job(void *(*fn)(void *), void *arg)
{
    return spawn_job_for(NULL, fn, arg);
}

/* ---- copying bytes --------------------------------------------------------------- */

typedef struct copy_job {
    int from, to;
    int *refs; /* shared by the two directions of a tunnel, else NULL */
    char label[64];
} copy_job;

/* Copies until EOF, then EOF onward (shutdown or close). A tunnel's two
 * directions share refs: the last one to finish closes both sockets. */
static void *copy_main(void *x)
{
    copy_job *c = x;
    char buf[65536];
    unsigned long long total = 0;
    bool broken = false;
    for (;;) {
        ssize_t n = read(c->from, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            broken = n < 0;
            break;
        }
        lx_trace("%s: %zd bytes", c->label, n);
        if (lx_write_all(c->to, buf, (size_t)n) != 0) {
            broken = true;
            break;
        }
        total += (unsigned long long)n;
    }
    lx_trace("%s: %s after %llu bytes", c->label, broken ? "broken" : "end of stream", total);
    if (c->refs == NULL) {
        if (c->from == c->to) { /* a duplex stream echoed onto itself */
            shutdown(c->to, SHUT_WR);
            close(c->to);
        } else {
            close(c->from);
            close(c->to);
        }
    } else {
        if (broken) { /* make the other direction stop too */
            shutdown(c->from, SHUT_RDWR);
            shutdown(c->to, SHUT_RDWR);
        } else {
            shutdown(c->to, SHUT_WR); /* half-close, as TCP would */
        }
        if (atomic_fetch_sub((atomic_int *)c->refs, 1) == 1) {
            close(c->from);
            close(c->to);
            free(c->refs);
        }
    }
    free(c);
    return NULL;
}

static void start_copy(int from, int to, int *refs, const char *label)
{
    copy_job *c = malloc(sizeof *c);
    if (c != NULL) {
        *c = (copy_job){ .from = from, .to = to, .refs = refs };
        snprintf(c->label, sizeof c->label, "%.*s", (int)sizeof c->label - 1, label); /* (cut to fit) */
    }
    if (c == NULL || !spawn_job(copy_main, c)) {
        free(c);
        close(from);
        if (to != from)
            close(to);
    }
}

/* ---- echo ------------------------------------------------------------------------- */

static bool is_attachment(const lc_value *v)
{
    lc_type t = lc_value_type(v);
    return t == LC_SENDER || t == LC_RECEIVER || t == LC_STREAM;
}

/* Copies the plain data of v into m (channel ends and streams left out: map
 * entries dropped, array elements as nil). */
static lc_value *copy_plain(lc_msg *m, const lc_value *v, int depth)
{
    if (depth > 100)
        return lc_new_nil(m);
    size_t n;
    switch (lc_value_type(v)) {
    case LC_BOOL:   return lc_new_bool(m, lc_value_bool(v));
    case LC_INT:    return lc_new_int(m, lc_value_int(v));
    case LC_UINT:   return lc_new_uint(m, lc_value_uint(v));
    case LC_DOUBLE: return lc_new_double(m, lc_value_double(v));
    case LC_STRING: {
        const char *s = lc_value_string(v, &n);
        return lc_new_stringn(m, s, n);
    }
    case LC_BINARY: {
        const void *p = lc_value_binary(v, &n);
        return lc_new_binary(m, p, n);
    }
    case LC_TIME: {
        int64_t sec;
        uint32_t ns;
        lc_value_time(v, &sec, &ns);
        return lc_new_time(m, sec, ns);
    }
    case LC_ARRAY: {
        lc_value *a = lc_new_array(m);
        for (size_t i = 0; a != NULL && i < lc_value_len(v); i++)
            if (lc_array_append(m, a, copy_plain(m, lc_array_get(v, i), depth + 1)) != 0)
                return NULL;
        return a;
    }
    case LC_MAP: {
        lc_value *o = lc_new_map(m);
        for (size_t i = 0; o != NULL && i < lc_value_len(v); i++) {
            const lc_value *val = lc_map_value(v, i);
            if (is_attachment(val))
                continue;
            if (lc_map_set_value(m, o, copy_plain(m, lc_map_key(v, i), depth + 1),
                                 copy_plain(m, val, depth + 1)) != 0)
                return NULL;
        }
        return o;
    }
    default:
        return lc_new_nil(m);
    }
}

typedef struct found {
    lc_value *senders[32], *reads[32], *writes[32], *duplex[32];
    int ns, nr, nw, nd;
} found;

static void collect(lc_value *v, found *f, int depth)
{
    if (depth > 100)
        return;
    switch (lc_value_type(v)) {
    case LC_SENDER:
        if (f->ns < 32)
            f->senders[f->ns++] = v;
        return;
    case LC_STREAM: {
        lc_stream_mode md = lc_value_stream_mode(v);
        if (md == LC_STREAM_READ && f->nr < 32)
            f->reads[f->nr++] = v;
        else if (md == LC_STREAM_WRITE && f->nw < 32)
            f->writes[f->nw++] = v;
        else if (md == LC_STREAM_DUPLEX && f->nd < 32)
            f->duplex[f->nd++] = v;
        return;
    }
    case LC_ARRAY:
        for (size_t i = 0; i < lc_value_len(v); i++)
            collect(lc_array_get(v, i), f, depth + 1);
        return;
    case LC_MAP:
        for (size_t i = 0; i < lc_value_len(v); i++)
            collect(lc_map_value(v, i), f, depth + 1);
        return;
    default:
        return;
    }
}

static void echo_handle(lc_msg *m, const char *where)
{
    if (lc_msg_body(m, NULL, NULL) != NULL)
        return; /* an opaque body: nothing to answer on */
    found f = { .ns = 0 };
    collect(lc_msg_root(m), &f, 0);
    char label[96];
    for (int i = 0; i < f.nd; i++) {
        int fd = lc_value_take_fd(f.duplex[i], NULL);
        snprintf(label, sizeof label, "%s duplex stream echo", where);
        if (fd >= 0)
            start_copy(fd, fd, NULL, label);
    }
    for (int i = 0; i < f.nr; i++) {
        int from = lc_value_take_fd(f.reads[i], NULL);
        int to = i < f.nw ? lc_value_take_fd(f.writes[i], NULL) : -1;
        snprintf(label, sizeof label, "%s stream %d -> stream %d", where, i + 1, i + 1);
        if (from >= 0 && to >= 0)
            start_copy(from, to, NULL, label);
        else if (from >= 0)
            close(from); /* nowhere to copy it: the sender's writes are dropped */
        else if (to >= 0)
            close(to);
    }
    /* unpaired writable streams stay in the message: freeing it closes them (EOF) */
    for (int i = 0; i < f.ns; i++) {
        lc_sender *snd = lc_value_take_sender(f.senders[i], NULL);
        if (snd == NULL)
            continue;
        lc_msg *r = lc_msg_new();
        lc_value *root = r ? copy_plain(r, lc_msg_root(m), 0) : NULL;
        if (root != NULL && lc_msg_set_root(r, root) == 0) {
            lx_trace_msg(where, "reply >>", r);
            int rc = lc_send(snd, r, 10000);
            if (rc != 0) {
                lx_log("%s: reply not sent: %s", where, lc_strerror(rc));
                lc_msg_free(r);
            }
        } else {
            lc_msg_free(r);
        }
        lc_sender_release(snd); /* closes the reply channel: the client sees its end */
    }
}

/* ---- exec --------------------------------------------------------------------------- */

static int child_add(pid_t pid, sess_rec *rec, bool awaited)
{
    pthread_mutex_lock(&mu);
    int slot = -1;
    for (int i = 0; i < (int)(sizeof children / sizeof children[0]) && slot < 0; i++)
        if (children[i].pid == 0) {
            children[i] = (struct child){ pid, rec, awaited, false, false };
            slot = i;
        }
    pthread_mutex_unlock(&mu);
    return slot;
}

/* sig (SIGTERM or SIGKILL) to the process group of children[i]. mu held. */
static void signal_group_locked(size_t i, int sig)
{
    kill(-children[i].pid, sig); /* its process group: what it started too */
    if (sig == SIGKILL) {
        children[i].killed = true;
        pthread_cond_broadcast(&kill_cv);
    } else {
        children[i].termed = true;
    }
}

/* The session rec ended: the commands whose status it waited for are
 * nobody's now (an interrupted `lchan exec` left them running): sig to
 * them. Returns how many. mu held. */
static int signal_orphans_locked(sess_rec *rec, int sig)
{
    int n = 0;
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i].pid > 0 && children[i].rec == rec && children[i].awaited) {
            signal_group_locked(i, sig);
            n++;
        }
    return n;
}

/* Does process group pgid have a live member other than pgid itself? (From
 * /proc; true when it cannot be read, which only holds a pid a while.) */
static bool group_has_others(pid_t pgid)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return true;
    bool other = false;
    struct dirent *e;
    while (!other && (e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || pid == pgid)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        /* "pid (comm) state ppid pgrp ...": comm may hold anything, ')' too */
        char *p = strrchr(buf, ')');
        char state;
        int ppid, pgrp;
        if (p != NULL && sscanf(p + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == pgid && state != 'Z' &&
            state != 'X')
            other = true;
    }
    closedir(d);
    return other;
}

/* Waits for command pid (in slot) to exit and reaps it; its wait status.
 * A command whose group got SIGTERM from us (termed) may die of it while
 * others of its group ignore it: reaped at once, it would leave the slot,
 * and the SIGKILL that follows (session_main, a stop) would not reach them.
 * So it is left a zombie (its pid, the group's id, stays ours and cannot be
 * reused) until SIGKILL has gone to the group or the group has nobody else. */
static int reap_child(pid_t pid, int slot)
{
    int ws = 0;
    if (slot < 0) { /* (not tracked: too many at once) */
        while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
        }
        return ws;
    }
    siginfo_t si;
    while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&mu);
    for (;;) {
        if (!children[slot].termed || children[slot].killed)
            break;
        pthread_mutex_unlock(&mu);
        bool others = group_has_others(pid); /* (slot is ours: nobody frees it) */
        pthread_mutex_lock(&mu);
        if (!others)
            break;
        if (!children[slot].killed) { /* look again in 100 ms, or when SIGKILL went */
            struct timespec t;
            clock_gettime(CLOCK_REALTIME, &t);
            t.tv_nsec += 100 * 1000000L;
            if (t.tv_nsec >= 1000000000L) {
                t.tv_sec++;
                t.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&kill_cv, &mu, &t);
        }
    }
    /* under mu: a SIGTERM to the group either came before (termed, handled
     * above) or finds the slot free */
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    children[slot].pid = 0;
    pthread_mutex_unlock(&mu);
    return ws;
}

typedef struct exec_job {
    lc_msg *m;
    sess_rec *rec; /* the session it came on (its jobs count keeps it) */
    char where[64];
} exec_job;

/* Takes stream `key` out of the request, or opens /dev/null in its place. */
static int take_stream(lc_msg *m, const char *key, int flags)
{
    lc_value *v = lc_map_get(lc_msg_root(m), key);
    int fd = v && lc_value_type(v) == LC_STREAM ? lc_value_take_fd(v, NULL) : -1;
    return fd >= 0 ? fd : open("/dev/null", flags | O_CLOEXEC);
}

/* A string value with a NUL byte inside (strings are length-counted). */
static bool has_nul(const lc_value *v)
{
    size_t n;
    const char *s = lc_value_string(v, &n);
    return s == NULL || strlen(s) != n;
}

static void *exec_main(void *x)
{
    exec_job *j = x;
    lc_msg *m = j->m;
    lc_value *root = lc_msg_root(m);
    lc_value *cmdv = lc_map_get(root, "Cmd"), *argsv = lc_map_get(root, "Args");
    lc_value *sv = lc_map_get(root, "StatusChan");
    lc_sender *status_to = sv && lc_value_type(sv) == LC_SENDER ? lc_value_take_sender(sv, NULL) : NULL;
    int in = take_stream(m, "Stdin", O_RDONLY), out = take_stream(m, "Stdout", O_WRONLY),
        err = take_stream(m, "Stderr", O_WRONLY);

    char why[300] = "";
    size_t nargs = argsv && lc_value_type(argsv) == LC_ARRAY ? lc_value_len(argsv) : 0;
    char **argv = calloc(nargs + 2, sizeof *argv);
    /* (a string with a NUL in it would be cut there: another command, or
     * other arguments, than the ones asked for) */
    if (lc_value_type(cmdv) != LC_STRING || lc_value_len(cmdv) == 0)
        snprintf(why, sizeof why, "the request has no \"Cmd\" string");
    else if (has_nul(cmdv))
        snprintf(why, sizeof why, "\"Cmd\" has a NUL byte in it");
    else if (argsv != NULL && lc_value_type(argsv) != LC_ARRAY && lc_value_type(argsv) != LC_NIL)
        snprintf(why, sizeof why, "\"Args\" is not an array of strings");
    else if (argv == NULL)
        snprintf(why, sizeof why, "out of memory");
    for (size_t i = 0; why[0] == '\0' && i < nargs; i++) {
        lc_value *a = lc_array_get(argsv, i);
        if (lc_value_type(a) != LC_STRING)
            snprintf(why, sizeof why, "\"Args\"[%zu] is not a string", i);
        else if (has_nul(a))
            snprintf(why, sizeof why, "\"Args\"[%zu] has a NUL byte in it", i);
        argv[i + 1] = (char *)lc_value_string(a, NULL);
    }

    int status = 127;
    if (why[0] == '\0') {
        argv[0] = (char *)lc_value_string(cmdv, NULL);
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t at;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in, 0);
        posix_spawn_file_actions_adddup2(&fa, out, 1);
        posix_spawn_file_actions_adddup2(&fa, err, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
        /* nothing else of ours: other sessions' streams and passed fds (some
         * not close-on-exec), what our own parent left open */
        posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
        posix_spawnattr_init(&at);
        sigset_t none, deflt;
        sigemptyset(&none);
        sigemptyset(&deflt);
        sigaddset(&deflt, SIGPIPE); /* we ignore it; the command should not */
        posix_spawnattr_setsigmask(&at, &none);
        posix_spawnattr_setsigdefault(&at, &deflt);
        /* a process group of its own (pgid = its pid): ending the command
         * (signal_orphans_locked, a stop) signals the group, so what the
         * command started itself (sh -c 'sleep 88; ...') ends with it */
        posix_spawnattr_setpgroup(&at, 0);
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
        pid_t pid;
        int rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&at);
        if (rc != 0) {
            snprintf(why, sizeof why, "cannot run '%s': %s", argv[0], strerror(rc));
        } else {
            int slot = child_add(pid, j->rec, status_to != NULL);
            lx_log("%s: running '%s' (%zu args) as pid %d", j->where, argv[0], nargs, (int)pid);
            /* the child has its copies: ours must go, or the client never sees EOF */
            close(in);
            close(out);
            close(err);
            in = out = err = -1;
            int ws = reap_child(pid, slot);
            status = WIFEXITED(ws) ? WEXITSTATUS(ws) : WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : 255;
        }
    }
    if (why[0] != '\0') {
        char line[400];
        int n = snprintf(line, sizeof line, "lchan serve: %s\n", why);
        lx_write_all(err, line, (size_t)n);
        lx_log("%s: %s", j->where, why);
    }
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (err >= 0)
        close(err);
    lx_log("%s: status %d", j->where, status);
    if (status_to != NULL) {
        lc_msg *r = lc_pack("{s:i}", "Status", status);
        lx_trace_msg(j->where, "StatusChan >>", r);
        int rc = r ? lc_send(status_to, r, 10000) : LC_ENOMEM;
        if (rc != 0) {
            lx_log("%s: status not sent: %s", j->where, lc_strerror(rc));
            lc_msg_free(r);
        }
        lc_sender_release(status_to);
    }
    free(argv);
    lc_msg_free(m);
    free(j);
    return NULL;
}

/* ---- gateway ------------------------------------------------------------------------- */

/* Dials host:port (host may be [v6]); a connected blocking socket or -errno
 * (or -1000 - EAI_* for a name that does not resolve). */
static int tcp_dial(const char *hostport, char *why, size_t whylen)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || colon == hostport || colon[1] == '\0' || (size_t)(colon - hostport) >= sizeof host) {
        snprintf(why, whylen, "\"%s\" is not host:port", hostport);
        return -1;
    }
    size_t hn = (size_t)(colon - hostport);
    memcpy(host, hostport, hn);
    host[hn] = '\0';
    if (host[0] == '[' && hn > 2 && host[hn - 1] == ']') {
        memmove(host, host + 1, hn - 2);
        host[hn - 2] = '\0';
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res;
    int g = getaddrinfo(host, colon + 1, &hints, &res);
    if (g != 0) {
        snprintf(why, whylen, "dial %s: %s", hostport, gai_strerror(g));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *a = res; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            struct pollfd p = { fd, POLLOUT, 0 };
            socklen_t sl = sizeof e;
            rc = poll(&p, 1, 10000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) == 0 && e == 0
                     ? 0
                     : -1;
            if (rc != 0 && e == 0)
                e = ETIMEDOUT;
        } else if (rc != 0) {
            e = errno;
        }
        if (rc != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        char t[96];
        snprintf(why, whylen, "dial %s: %s", hostport, lx_errtext(-e, t, sizeof t));
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1; /* small writes (requests, replies) go out now, not after an ACK */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void *gateway_main(void *x)
{
    exec_job *j = x;
    lc_msg *m = j->m;
    lc_value *root = lc_msg_root(m);
    lc_value *dv = lc_map_get(root, "Dial"), *cv = lc_map_get(root, "Conn"), *rv = lc_map_get(root, "Reply");
    lc_sender *reply = rv && lc_value_type(rv) == LC_SENDER ? lc_value_take_sender(rv, NULL) : NULL;
    const char *target = lc_value_type(dv) == LC_STRING ? lc_value_string(dv, NULL) : NULL;
    char why[300] = "";
    int conn = -1, tcp = -1;
    if (target == NULL)
        snprintf(why, sizeof why, "the request has no \"Dial\": \"host:port\" string");
    else if (cv == NULL || lc_value_type(cv) != LC_STREAM || lc_value_stream_mode(cv) != LC_STREAM_DUPLEX)
        snprintf(why, sizeof why, "the request has no duplex byte stream \"Conn\"");
    else if ((tcp = tcp_dial(target, why, sizeof why)) >= 0)
        conn = lc_value_take_fd(cv, NULL);
    if (why[0] != '\0')
        lx_log("%s: %s", j->where, why);
    else
        lx_log("%s: tunnel to %s open", j->where, target);
    if (reply != NULL) {
        lc_msg *r = why[0] ? lc_pack("{s:s}", "Error", why) : lc_pack("{s:s}", "Connected", target);
        lx_trace_msg(j->where, "Reply >>", r);
        if (r != NULL && lc_send(reply, r, 10000) != 0)
            lc_msg_free(r);
        lc_sender_release(reply);
    }
    if (conn >= 0) {
        int *refs = malloc(sizeof *refs);
        if (refs == NULL) {
            close(conn);
            close(tcp);
        } else {
            *refs = 2;
            char label[96];
            snprintf(label, sizeof label, "%s stream -> %s", j->where, target);
            start_copy(conn, tcp, refs, label);
            snprintf(label, sizeof label, "%s %s -> stream", j->where, target);
            start_copy(tcp, conn, refs, label);
        }
    } else if (tcp >= 0) {
        close(tcp);
    }
    lc_msg_free(m); /* closes Conn when it was not taken: the client sees EOF */
    free(j);
    return NULL;
}

/* ---- sessions and channels ------------------------------------------------------------ */

typedef struct chan_job {
    lc_receiver *r;
    int sid, cid;
    sess_rec *rec;
} chan_job;

static void *chan_main(void *x)
{
    chan_job *c = x;
    char where[64];
    snprintf(where, sizeof where, "session#%d chan#%d", c->sid, c->cid);
    lc_msg *m;
    int rc;
    while ((rc = lc_recv(c->r, &m, -1)) == 0) {
        lx_trace_msg(where, "<<", m);
        if (svc == SV_ECHO) {
            echo_handle(m, where);
            lc_msg_free(m);
            continue;
        }
        /* commands and tunnels block: each on a thread of its own */
        exec_job *j = malloc(sizeof *j);
        if (j == NULL) {
            lc_msg_free(m);
            continue;
        }
        j->m = m;
        j->rec = c->rec;
        snprintf(j->where, sizeof j->where, "%s", where);
        if (!spawn_job_for(c->rec, svc == SV_EXEC ? exec_main : gateway_main, j)) {
            lc_msg_free(m);
            free(j);
        }
    }
    lx_trace("%s: %s", where, rc == LC_EOF ? "closed by the client" : lc_strerror(rc));
    lc_receiver_release(c->r);
    free(c);
    return NULL;
}

static void *session_main(void *x)
{
    sess_rec *rec = x;
    int cid = 0;
    lc_receiver *r;
    int rc;
    while ((rc = lc_session_receiver(rec->s, &r, -1)) == 0) {
        chan_job *c = malloc(sizeof *c);
        if (c == NULL) {
            lc_receiver_release(r);
            continue;
        }
        *c = (chan_job){ r, rec->id, ++cid, rec };
        lx_trace("session#%d chan#%d: opened by the client", rec->id, cid);
        if (!spawn_job_for(rec, chan_main, c)) {
            lc_receiver_release(r);
            free(c);
        }
    }
    char t[96];
    lx_log("session#%d: ended (%s)", rec->id, lx_session_why(lc_session_error(rec->s), t, sizeof t));
    pthread_mutex_lock(&mu);
    /* Commands whose status nobody can get any more end: SIGTERM, SIGKILL
     * 5 s later. (A client that goes while waiting for a status, e.g. an
     * interrupted `lchan exec`, left the command running for good.) Those
     * asked for without a StatusChan run on. */
    int orphans = signal_orphans_locked(rec, SIGTERM);
    if (orphans > 0)
        lx_log("session#%d: %d command%s nobody waits for any more: SIGTERM", rec->id, orphans,
               orphans == 1 ? "" : "s");
    struct timespec kill_at;
    clock_gettime(CLOCK_REALTIME, &kill_at);
    kill_at.tv_sec += 5;
    /* its commands and tunnels first: the session still writes what the
     * client sent before it closed into their stdin (byte streams drain after
     * a graceful end, until lc_session_free) */
    while (rec->jobs > 0) {
        if (orphans > 0 && pthread_cond_timedwait(&jobs_cv, &mu, &kill_at) == ETIMEDOUT) {
            orphans = signal_orphans_locked(rec, SIGKILL);
            if (orphans > 0)
                lx_log("session#%d: SIGKILL to %d command%s still running", rec->id, orphans, orphans == 1 ? "" : "s");
            orphans = 0;
        } else if (orphans == 0) {
            pthread_cond_wait(&jobs_cv, &mu);
        }
    }
    for (sess_rec **p = &sessions; *p != NULL; p = &(*p)->next)
        if (*p == rec) {
            *p = rec->next;
            break;
        }
    pthread_mutex_unlock(&mu);
    lc_session_free(rec->s);
    free(rec);
    return NULL;
}

static void *close_main(void *x)
{
    sess_rec *rec = x;
    int rc = lc_session_close(rec->s, CLOSE_MS);
    if (rc != 0 && rc != LC_ESESSION)
        lx_log("session#%d: close: %s", rec->id, lc_strerror(rc));
    return NULL;
}

/* Closes every session gracefully, all at once: a thread each, so N
 * sessions whose peers are slow to finish take one CLOSE_MS, not N. A hold
 * on each session's job count keeps session_main from freeing it meanwhile;
 * the close threads are jobs too, covered by the caller's wait for `active`. */
static void close_all_sessions(void)
{
    pthread_mutex_lock(&mu);
    size_t n = 0;
    for (sess_rec *r = sessions; r != NULL; r = r->next)
        n++;
    sess_rec **list = calloc(n ? n : 1, sizeof *list);
    if (list == NULL) { /* out of memory: one by one, as a last resort */
        for (sess_rec *r = sessions; r != NULL; r = r->next)
            lc_session_close(r->s, CLOSE_MS);
        pthread_mutex_unlock(&mu);
        return;
    }
    n = 0;
    for (sess_rec *r = sessions; r != NULL; r = r->next) {
        list[n++] = r;
        r->jobs++; /* the hold */
    }
    pthread_mutex_unlock(&mu);
    for (size_t i = 0; i < n; i++)
        if (!spawn_job_for(list[i], close_main, list[i]))
            close_main(list[i]); /* (no thread: here, then) */
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n; i++)
        if (--list[i]->jobs == 0)
            pthread_cond_broadcast(&jobs_cv);
    pthread_mutex_unlock(&mu);
    free(list);
}

/* ---- the command ------------------------------------------------------------------------ */

/* Is the address a listener is bound to (bound: lc_listener_url's URL,
 * from getsockname) reachable from this host only? unix sockets are (file
 * permissions guard them); tcp:// on 127.0.0.0/8 or ::1 (also as
 * ::ffff:127.x.y.z). The address actually bound is checked, not the text
 * given: a scheme in capitals, a host name, an empty host all end up here as
 * numbers. Anything else, or what does not parse, is not. */
static bool bound_is_local(const char *bound)
{
    if (strncasecmp(bound, "unix://", 7) == 0)
        return true;
    if (strncasecmp(bound, "tcp://", 6) != 0)
        return false;
    const char *h = bound + 6, *colon = strrchr(h, ':');
    if (colon == NULL)
        return false;
    size_t n = (size_t)(colon - h);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    char host[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof host)
        return false;
    memcpy(host, h, n);
    host[n] = '\0';
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return ntohl(a4.s_addr) >> 24 == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

/* Marks every fd this process was started with (other than 0, 1, 2) close-on-
 * exec, so the commands of serve --exec do not inherit them (where
 * posix_spawn_file_actions_addclosefrom_np is missing, this is the guard;
 * where it is there, it closes them too). */
static void cloexec_inherited_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end != '\0' || end == e->d_name || fd < 3 || fd == dirfd(d))
            continue;
        int fl = fcntl((int)fd, F_GETFD);
        if (fl >= 0)
            fcntl((int)fd, F_SETFD, fl | FD_CLOEXEC);
    }
    closedir(d);
}

int lx_serve(int argc, char **argv)
{
    const char *url = NULL;
    int modes = 0;
    bool allow_remote = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--echo") == 0) {
            svc = SV_ECHO;
            modes++;
        } else if (strcmp(a, "--exec") == 0) {
            svc = SV_EXEC;
            modes++;
        } else if (strcmp(a, "--gateway") == 0) {
            svc = SV_GATEWAY;
            modes++;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            lx_verbose = true;
        } else if (strcmp(a, "--allow-remote") == 0) {
            allow_remote = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            if (!lx_common_opt(a, lx_help_serve))
                lx_usage("unknown option '%s'", a);
        } else if (url == NULL) {
            url = a;
        } else {
            lx_usage("unexpected argument '%s'", a);
        }
    }
    if (url == NULL)
        lx_usage("missing URL (e.g. unix:///tmp/lchan.sock or tcp://127.0.0.1:0)");
    if (modes != 1)
        lx_usage("choose one service: --echo, --exec or --gateway");
    if (svc == SV_EXEC)
        cloexec_inherited_fds();

    lc_listener *l;
    lc_error err = { 0 };
    lc_options o;
    lx_session_options(&o);
    int rc = lc_listen(url, &o, &l, &err);
    if (rc == LC_EINVAL || rc == LC_ENOTSUP)
        lx_die(LX_URL, "bad URL %s (expected unix:///path or tcp://host:port)", err.text[0] ? err.text : url);
    if (rc != 0) {
        char t[128];
        if (rc == -ENOTSOCK && strncmp(url, "unix://", 7) == 0)
            lx_die(LX_LISTEN, "cannot listen on %s: %s exists and is not a socket (remove it, or pick another path)",
                   url, url + 7);
        lx_die(LX_LISTEN, "cannot listen on %s: %s%s", url, lx_errtext(rc, t, sizeof t),
               rc == -EADDRINUSE ? " (another server is there: pick another address, or port 0)" : "");
    }
    char bound[512];
    bool known = lc_listener_url(l, bound, sizeof bound) == 0;
    if (svc != SV_ECHO && !allow_remote && !(known ? bound_is_local(bound) : strncasecmp(url, "unix://", 7) == 0)) {
        /* (checked once bound: what the URL's text says is not the point) */
        lc_listener_close(l);
        lx_usage("%s is not a loopback address%s%s%s: anyone who can reach it could %s; add --allow-remote "
                 "if that is what you want",
                 url, known ? " (it is bound to " : "", known ? bound : "", known ? ")" : "",
                 svc == SV_EXEC ? "run commands" : "open connections from this host");
    }
    if (!known)
        snprintf(bound, sizeof bound, "%s", url);
    /* the first line on stdout: where to connect (scripts wait for it) */
    printf("%s\n", bound);
    fflush(stdout);
    static const char *const names[] = { "echo", "exec", "gateway" };
    lx_log("%s service on %s (SIGINT or SIGTERM stops it)", names[svc], bound);

    while (!lx_stop) {
        lc_session *s;
        rc = lc_accept(l, &s, 200);
        if (rc == LC_ETIMEDOUT)
            continue;
        if (rc != 0) {
            lx_warn("serve: accept: %s", lc_strerror(rc));
            struct pollfd p = { lx_stop_fd(), POLLIN, 0 };
            poll(&p, 1, 100); /* e.g. out of fds: give the others time to finish */
            continue;
        }
        sess_rec *rec = malloc(sizeof *rec);
        if (rec == NULL) {
            lc_session_free(s);
            continue;
        }
        rec->s = s;
        rec->jobs = 0;
        rec->id = atomic_fetch_add(&next_session_id, 1);
        lx_log("session#%d: accepted", rec->id);
        pthread_mutex_lock(&mu);
        rec->next = sessions;
        sessions = rec;
        pthread_mutex_unlock(&mu);
        if (!spawn_job(session_main, rec)) {
            pthread_mutex_lock(&mu);
            sessions = rec->next;
            pthread_mutex_unlock(&mu);
            lc_session_free(s);
            free(rec);
        }
    }

    /* A clean stop: no new sessions, each session closed gracefully (what was
     * sent is flushed), running commands ended, every thread finished. */
    lx_log("stopping (signal %d)", (int)lx_stop);
    lc_listener_close(l);
    close_all_sessions();
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i].pid > 0)
            signal_group_locked(i, SIGTERM); /* (a process group each: see exec_main) */
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    while (active > 0 && pthread_cond_timedwait(&idle_cv, &mu, &dl) == 0) {
    }
    /* 5 s on: SIGKILL to the groups still there (what ignores SIGTERM), and
     * 2 s more for their threads to see it */
    int killed = 0;
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i].pid > 0) {
            signal_group_locked(i, SIGKILL);
            killed++;
        }
    if (killed > 0) {
        lx_log("SIGKILL to %d command%s still running after 5 s", killed, killed == 1 ? "" : "s");
        dl.tv_sec += 2;
        while (active > 0 && pthread_cond_timedwait(&idle_cv, &mu, &dl) == 0) {
        }
    }
    int left = active;
    pthread_mutex_unlock(&mu);
    if (left > 0)
        lx_warn("serve: %d tasks still running after %d s; exiting anyway", left, killed > 0 ? 7 : 5);
    lx_log("stopped");
    return LX_OK;
}
