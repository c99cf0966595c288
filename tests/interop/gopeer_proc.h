/*
 * gopeer_proc.h - what the interop programs (test_interop.c,
 * test_interop_stress.c) share: gopeer processes started with posix_spawn,
 * their stdout read line by line and their stderr collected by a thread,
 * per-case deadlines that kill gopeer first, the relay of
 * LC_INTEROP_RECORD=DIR, fd-counting setup/teardown, and the start of main.
 * Header-only (like tests/net/nettest.h); include it after cmocka.h and the
 * system headers the programs list.
 */
#ifndef LC_GOPEER_PROC_H
#define LC_GOPEER_PROC_H

/* Helpers one of the two programs may not call (static, not inline: inlined,
 * GCC's -Wformat-truncation sees through the intended truncations). */
#define GP_MAYBE_UNUSED __attribute__((unused))

extern char **environ;

#if defined(__SANITIZE_THREAD__)
#define IP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define IP_TSAN 1
#endif
#endif

static const char *gopeer_bin; /* argv[2] */

#define IO_TIMEOUT_MS 10000 /* one step (a line, a message, a read) */

/* ---- the gopeer process --------------------------------------------------------- */

typedef struct gp_proc {
    pid_t pid;    /* 0 once reaped */
    int out;      /* read end of its stdout */
    int err;      /* read end of its stderr (the collector thread reads it) */
    bool eof;     /* stdout reached EOF */
    pthread_t err_thread;
    pthread_mutex_t err_mu;
    pthread_cond_t err_cond; /* signalled when errlog grows or ends */
    char *errlog; /* err_mu: every stderr byte so far, NUL-terminated */
    size_t errlog_len;
    bool err_eof; /* err_mu */
    bool collecting; /* err_thread runs */
    char line[512];
    char outlog[8192]; /* every stdout line read so far */
    size_t outlog_len;
} gp_proc;

/* The running gopeer processes (a server and, when recording, its relay), for
 * the deadline handler and the teardown. */
#define GP_MAX 2
static gp_proc *volatile gp_running[GP_MAX];
static volatile pid_t gp_running_pid[GP_MAX];
static gp_proc gp_relay; /* LC_INTEROP_RECORD: the relay in front of the server */

static GP_MAYBE_UNUSED void ip_deadline_hit(int sig)
{
    (void)sig;
    for (int i = 0; i < GP_MAX; i++)
        if (gp_running_pid[i] > 0)
            kill(gp_running_pid[i], SIGKILL);
    static const char a[] = "\nDEADLINE EXCEEDED in interop case: ";
    ssize_t w = write(2, a, sizeof a - 1);
    w = write(2, lc_test_current, strlen(lc_test_current));
    w = write(2, " (gopeer killed)\n", 17);
    (void)w;
    _exit(3);
}

/* Arms the case's deadline: on expiry gopeer is killed and the process exits 3. */
static GP_MAYBE_UNUSED void ip_deadline(const char *name, unsigned seconds)
{
    lc_test_current = name;
    signal(SIGALRM, ip_deadline_hit);
    alarm(seconds);
}
#define IP_DEADLINE(s) ip_deadline(__func__, (s))

/* Starts gopeer with argv[1..] = args (NULL-terminated), our environment plus
 * extra_env ("NAME=value", may be NULL). */
static GP_MAYBE_UNUSED void *gp_err_collect(void *x)
{
    gp_proc *p = x;
    char buf[4096];
    for (;;) {
        ssize_t n = read(p->err, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        pthread_mutex_lock(&p->err_mu);
        if (n <= 0) {
            p->err_eof = true;
        } else {
            char *g = realloc(p->errlog, p->errlog_len + (size_t)n + 1);
            if (g != NULL) {
                memcpy(g + p->errlog_len, buf, (size_t)n);
                p->errlog = g;
                p->errlog_len += (size_t)n;
                p->errlog[p->errlog_len] = '\0';
            }
        }
        pthread_cond_broadcast(&p->err_cond);
        bool end = p->err_eof;
        pthread_mutex_unlock(&p->err_mu);
        if (end)
            return NULL;
    }
}

static GP_MAYBE_UNUSED void gp_start_env(gp_proc *p, const char *const *args, const char *extra_env)
{
    memset(p, 0, sizeof *p);
    int pf[2], ef[2];
    assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
    assert_int_equal(pipe2(ef, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pf[1], 1); /* dup2 clears CLOEXEC */
    posix_spawn_file_actions_adddup2(&fa, ef[1], 2);
    const char *argv[16] = { gopeer_bin };
    size_t n = 1;
    while (args[n - 1] != NULL && n < 15) {
        argv[n] = args[n - 1];
        n++;
    }
    argv[n] = NULL;
    char **env = environ;
    size_t ne = 0;
    while (environ[ne] != NULL)
        ne++;
    if (extra_env != NULL) {
        env = calloc(ne + 2, sizeof *env);
        memcpy(env, environ, ne * sizeof *env);
        env[ne] = (char *)extra_env;
    }
    int rc = posix_spawn(&p->pid, gopeer_bin, &fa, NULL, (char *const *)argv, env);
    if (env != environ)
        free(env);
    posix_spawn_file_actions_destroy(&fa);
    close(pf[1]);
    close(ef[1]);
    p->out = pf[0];
    p->err = ef[0];
    pthread_mutex_init(&p->err_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->err_cond, &ca);
    pthread_condattr_destroy(&ca);
    p->errlog = strdup("");
    if (rc != 0) {
        p->pid = 0;
        p->err_eof = true;
        fail_msg("posix_spawn %s: %s", gopeer_bin, strerror(rc));
    }
    assert_int_equal(pthread_create(&p->err_thread, NULL, gp_err_collect, p), 0);
    p->collecting = true;
    for (int i = 0; i < GP_MAX; i++)
        if (gp_running[i] == NULL) {
            gp_running[i] = p;
            gp_running_pid[i] = p->pid;
            break;
        }
}

static GP_MAYBE_UNUSED void gp_start(gp_proc *p, const char *const *args)
{
    gp_start_env(p, args, NULL);
}

/* The next stdout line (without the newline), or NULL at EOF / after timeout_ms. */
static GP_MAYBE_UNUSED const char *gp_line(gp_proc *p, int timeout_ms)
{
    size_t n = 0;
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        int64_t left = (end - lc_test_now_us()) / 1000;
        struct pollfd pfd = { p->out, POLLIN, 0 };
        if (left <= 0 || poll(&pfd, 1, (int)left) != 1)
            return NULL;
        char c;
        ssize_t r = read(p->out, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r != 1) {
            p->eof = true;
            return NULL;
        }
        if (c == '\n')
            break;
        if (n + 1 < sizeof p->line)
            p->line[n++] = c;
    }
    p->line[n] = '\0';
    if (p->outlog_len + n + 2 < sizeof p->outlog) {
        memcpy(p->outlog + p->outlog_len, p->line, n);
        p->outlog_len += n;
        p->outlog[p->outlog_len++] = '\n';
        p->outlog[p->outlog_len] = '\0';
    }
    return p->line;
}

/* gopeer's stderr so far, NUL-terminated (malloc'ed). */
static GP_MAYBE_UNUSED char *gp_stderr(gp_proc *p)
{
    pthread_mutex_lock(&p->err_mu);
    char *s = strdup(p->errlog);
    pthread_mutex_unlock(&p->err_mu);
    return s;
}

/* Waits until gopeer's stderr contains text (NULL: until it ends); false
 * after timeout_ms or when stderr ended without it. */
static GP_MAYBE_UNUSED bool gp_wait_stderr(gp_proc *p, const char *text, int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&p->err_mu);
    bool found;
    while (!(found = text != NULL && strstr(p->errlog, text) != NULL) && !p->err_eof)
        if (pthread_cond_timedwait(&p->err_cond, &p->err_mu, &dl) == ETIMEDOUT)
            break;
    found = text == NULL ? p->err_eof : strstr(p->errlog, text) != NULL;
    pthread_mutex_unlock(&p->err_mu);
    return found;
}

static GP_MAYBE_UNUSED void gp_dump(gp_proc *p, const char *why)
{
    char *e = gp_stderr(p);
    fprintf(stderr, "---- gopeer (%s): stdout so far ----\n%s---- gopeer stderr ----\n%s----\n", why, p->outlog,
            e);
    free(e);
}

/* Reads the rest of stdout (lines are kept in outlog) until EOF, then reaps
 * gopeer. Returns its wait status; on timeout kills it and fails. */
static GP_MAYBE_UNUSED int gp_wait(gp_proc *p, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    while (!p->eof) {
        int64_t left = (end - lc_test_now_us()) / 1000;
        if (gp_line(p, left > 0 ? (int)left : 0) == NULL && !p->eof) {
            /* SIGQUIT: the Go runtime prints every goroutine's stack and exits */
            kill(p->pid, SIGQUIT);
            gp_wait_stderr(p, NULL, 3000); /* until stderr ends */
            gp_dump(p, "did not exit; goroutines after SIGQUIT");
            fail_msg("gopeer did not exit within %d ms", timeout_ms);
        }
    }
    int st = 0;
    pid_t w;
    do
        w = waitpid(p->pid, &st, 0);
    while (w < 0 && errno == EINTR);
    assert_int_equal(w, p->pid);
    for (int i = 0; i < GP_MAX; i++)
        if (gp_running[i] == p)
            gp_running_pid[i] = 0;
    p->pid = 0;
    gp_wait_stderr(p, NULL, IO_TIMEOUT_MS); /* all of its stderr, for the checks after */
    return st;
}

/* Kills gopeer if it still runs, reaps it, closes our fds. Safe to call twice. */
static GP_MAYBE_UNUSED void gp_finish(gp_proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        p->pid = 0;
    }
    if (p->err >= 0) {
        /* gopeer is gone: its stderr ends, the collector returns */
        if (p->collecting)
            pthread_join(p->err_thread, NULL);
        p->collecting = false;
        const char *v = getenv("LC_INTEROP_VERBOSE");
        if (v != NULL && strcmp(v, "1") == 0)
            gp_dump(p, "LC_INTEROP_VERBOSE=1");
        close(p->err);
        pthread_mutex_destroy(&p->err_mu);
        pthread_cond_destroy(&p->err_cond);
        free(p->errlog);
        p->errlog = NULL;
    }
    if (p->out >= 0)
        close(p->out);
    p->out = p->err = -1;
    for (int i = 0; i < GP_MAX; i++)
        if (gp_running[i] == p) {
            gp_running[i] = NULL;
            gp_running_pid[i] = 0;
        }
    if (p != &gp_relay && gp_relay.pid > 0) {
        /* the relay ends once both directions have: the server is gone and
         * so is our session */
        int st = gp_wait(&gp_relay, IO_TIMEOUT_MS);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            gp_dump(&gp_relay, "relay exit");
        gp_finish(&gp_relay);
    }
}

/* Waits for exit status 0; dumps gopeer's output otherwise. */
static void gp_expect_exit0(gp_proc *p)
{
    int st = gp_wait(p, IO_TIMEOUT_MS);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        gp_dump(p, "bad exit");
        fail_msg("gopeer exit status %d (signal %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1,
                 WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    }
    if (strstr(p->outlog, "ERROR") != NULL) {
        gp_dump(p, "ERROR line");
        fail_msg("gopeer printed an ERROR line");
    }
}

/* With LC_INTEROP_RECORD=DIR, starts `gopeer relay` in front of url (a
 * listener, ours or gopeer's) recording DIR/CASE.c2s and .s2c, and replaces url
 * with the relay's. */
static GP_MAYBE_UNUSED void gp_maybe_relay(char *url, size_t len)
{
    const char *dir = getenv("LC_INTEROP_RECORD");
    if (dir == NULL || *dir == '\0')
        return;
    char c2s[512], s2c[512], target[256];
    snprintf(c2s, sizeof c2s, "%s/%s.c2s", dir, lc_test_current);
    snprintf(s2c, sizeof s2c, "%s/%s.s2c", dir, lc_test_current);
    snprintf(target, sizeof target, "%s", url);
    const char *rargs[] = { "relay", "tcp://127.0.0.1:0", target, c2s, s2c, NULL };
    gp_start(&gp_relay, rargs);
    const char *l = gp_line(&gp_relay, IO_TIMEOUT_MS);
    if (l == NULL || strncmp(l, "LISTENING ", 10) != 0) {
        gp_dump(&gp_relay, "relay: no LISTENING line");
        fail_msg("gopeer relay: no LISTENING line");
    }
    snprintf(url, len, "%s", l + 10);
}

/* Starts `gopeer serve URL MODE --once` (extra_env as in gp_start_env) and
 * returns the URL it listens on. */
static GP_MAYBE_UNUSED void gp_serve_env(gp_proc *p, const char *url, const char *mode, char *bound, size_t len,
                         const char *extra_env)
{
    const char *args[] = { "serve", url, mode, "--once", NULL };
    gp_start_env(p, args, extra_env);
    const char *l = gp_line(p, IO_TIMEOUT_MS);
    if (l == NULL || strncmp(l, "LISTENING ", 10) != 0) {
        gp_dump(p, "no LISTENING line");
        fail_msg("gopeer serve: no LISTENING line");
    }
    snprintf(bound, len, "%s", l + 10);
    gp_maybe_relay(bound, len);
}

static GP_MAYBE_UNUSED void gp_serve(gp_proc *p, const char *url, const char *mode, char *bound, size_t len)
{
    gp_serve_env(p, url, mode, bound, len, NULL);
}

/* Expects the next stdout line to be exactly want. */
static GP_MAYBE_UNUSED void gp_expect_line(gp_proc *p, const char *want)
{
    const char *l = gp_line(p, IO_TIMEOUT_MS);
    if (l == NULL || strcmp(l, want) != 0) {
        gp_dump(p, "unexpected line");
        fail_msg("gopeer stdout: want \"%s\", got %s%s%s", want, l ? "\"" : "", l ? l : "(EOF/timeout)",
                 l ? "\"" : "");
    }
}

/* Fails when gopeer complained that we skipped a half-close or a close. */
static GP_MAYBE_UNUSED void gp_expect_no_complaint(gp_proc *p)
{
    char *e = gp_stderr(p);
    bool bad = strstr(e, "did not half-close") != NULL || strstr(e, "did not close") != NULL;
    if (bad)
        fprintf(stderr, "---- gopeer stderr ----\n%s----\n", e);
    free(e);
    if (bad)
        fail_msg("gopeer: the C side did not half-close / close like a Go peer (see stderr)");
}

static char unix_path_buf[128];
static GP_MAYBE_UNUSED const char *unix_url(void)
{
    static int seq;
    snprintf(unix_path_buf, sizeof unix_path_buf, "unix:///tmp/lc-interop-%d-%d.sock", (int)getpid(), ++seq);
    return unix_path_buf;
}

/* ---- setup / teardown ----------------------------------------------------------- */

static int ip_fds_before;

static GP_MAYBE_UNUSED int ip_setup(void **state)
{
    (void)state;
    ip_deadline("(interop case)", 30);
    ip_fds_before = lc_test_count_fds();
    return 0;
}

static GP_MAYBE_UNUSED int ip_teardown(void **state)
{
    (void)state;
    alarm(0);
    for (int i = 0; i < GP_MAX; i++) /* a failed assertion left gopeer running */
        if (gp_running[i] != NULL)
            gp_finish(gp_running[i]); /* kills it first */
    int after = lc_test_count_fds();
    if (after != ip_fds_before) {
        fprintf(stderr, "fd leak: %d open before the case, %d after\n", ip_fds_before, after);
        return -1;
    }
    return 0;
}

/* ---- byte helpers --------------------------------------------------------------- */

static GP_MAYBE_UNUSED int write_all(int fd, const void *buf, size_t n)
{
    const char *c = buf;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd pf = { fd, POLLOUT, 0 };
            if (poll(&pf, 1, IO_TIMEOUT_MS) != 1)
                return -1;
            continue;
        }
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------------------- */

/* The start of each program's main (`PROG CASE GOPEER`): the exit code when
 * it should stop now (usage: 2, Go missing: 77, gopeer not built: 1), -1 to
 * run the cases. In TSan builds the data races listed in
 * tsan-known-bugs.supp are suppressed unless LC_RUN_KNOWN_BUGS=1 (TSan reads
 * TSAN_OPTIONS at startup, hence the re-exec). */
static GP_MAYBE_UNUSED int ip_prelude(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s CASE GOPEER|NONE\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[2], "NONE") == 0) {
        printf("SKIP: Go toolchain or Go -dev packages missing at configure time (scripts/setup.sh)\n");
        return 77;
    }
    gopeer_bin = argv[2];
    if (access(gopeer_bin, X_OK) != 0) {
        fprintf(stderr, "%s: not built (make the 'gopeer' target)\n", gopeer_bin);
        return 1;
    }
#ifdef IP_TSAN
    const char *kb = getenv("LC_RUN_KNOWN_BUGS");
    if ((kb == NULL || strcmp(kb, "1") != 0) && getenv("LC_INTEROP_TSAN_REEXEC") == NULL) {
        const char *old = getenv("TSAN_OPTIONS");
        char opts[2048];
        snprintf(opts, sizeof opts, "%s%ssuppressions=%s", old ? old : "", old && *old ? ":" : "",
                 LC_INTEROP_TSAN_SUPP);
        setenv("TSAN_OPTIONS", opts, 1);
        setenv("LC_INTEROP_TSAN_REEXEC", "1", 1);
        execv("/proc/self/exe", argv);
        perror("execv /proc/self/exe");
        return 1;
    }
#endif
    signal(SIGPIPE, SIG_IGN);
    lc__engine_default(); /* its fds live as long as the process */
    return -1;
}

/* Runs case `which` of the group ("all": every case). */
#define IP_RUN(name, tests, which)                                               \
    ((strcmp((which), "all") != 0 ? cmocka_set_test_filter(which) : (void)0), \
     cmocka_run_group_tests_name((name), (tests), NULL, NULL))

#endif
