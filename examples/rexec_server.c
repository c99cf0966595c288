/*
 * rexec_server.c - remote execution, as in docker/libchan's rexec example.
 * A request is the Go example's RemoteCommand:
 *
 *   {"Cmd": "tr", "Args": ["a-z", "A-Z"],
 *    "Stdin": <byte stream>, "Stdout": <byte stream>, "Stderr": <byte stream>,
 *    "StatusChan": <Sender>}
 *
 * The streams arrive as file descriptors, so they simply become the command's
 * fds 0, 1 and 2; when it exits, {"Status": N} goes back on StatusChan.
 *
 * Usage: rexec_server URL [SESSIONS]   (prints the bound URL first; serves
 * SESSIONS sessions one after the other, default: until killed)
 * Anyone who can connect runs commands: listen on a unix socket or loopback.
 */
#include <libchan.h>

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Closes the command's three streams: the client sees the end of Stdout and
 * Stderr only once every copy of them is closed. */
static void close_streams(int in, int out, int err)
{
    close(in);
    close(out);
    close(err);
}

/* Runs one RemoteCommand; returns its exit status (127: could not run it,
 * the reason written on Stderr). Closes in, out and err in every case. */
static int run(lc_msg *req, int in, int out, int err, const char *cmd)
{
    /* Args is optional; when there, an array of strings. A string is
     * length-counted in a message: one with a NUL byte inside would be cut
     * there, running something else than what was asked. */
    lc_value *args = lc_map_get(lc_msg_root(req), "Args");
    if (args != NULL && lc_value_type(args) == LC_NIL)
        args = NULL;
    if (args != NULL && lc_value_type(args) != LC_ARRAY) {
        dprintf(err, "rexec_server: Args is not an array of strings\n");
        close_streams(in, out, err);
        return 127;
    }
    if (strlen(cmd) != lc_value_len(lc_map_get(lc_msg_root(req), "Cmd"))) {
        dprintf(err, "rexec_server: Cmd has a NUL byte in it\n");
        close_streams(in, out, err);
        return 127;
    }
    size_t n = args ? lc_value_len(args) : 0;
    char **argv = calloc(n + 2, sizeof *argv);
    if (argv == NULL) {
        dprintf(err, "rexec_server: out of memory\n");
        close_streams(in, out, err);
        return 127;
    }
    argv[0] = (char *)cmd;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *a = lc_value_string(lc_array_get(args, i), &len); /* NULL: not a string */
        if (a == NULL || strlen(a) != len) {
            dprintf(err, "rexec_server: Args[%zu] is %s\n", i, a == NULL ? "not a string" : "cut by a NUL byte");
            free(argv);
            close_streams(in, out, err);
            return 127;
        }
        argv[i + 1] = (char *)a;
    }

    posix_spawn_file_actions_t fa; /* the streams become fds 0, 1, 2 */
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in, 0);
    posix_spawn_file_actions_adddup2(&fa, out, 1);
    posix_spawn_file_actions_adddup2(&fa, err, 2);
    posix_spawnattr_t at; /* we ignore SIGPIPE (see main); the command should not */
    sigset_t pipe_sig;
    sigemptyset(&pipe_sig);
    sigaddset(&pipe_sig, SIGPIPE);
    posix_spawnattr_init(&at);
    posix_spawnattr_setsigdefault(&at, &pipe_sig);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawnp(&pid, cmd, &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(argv);
    if (rc != 0) {
        dprintf(err, "rexec_server: cannot run %s: %s\n", cmd, strerror(rc));
        close_streams(in, out, err); /* or the client waits for their end for ever */
        return 127;
    }
    /* The child has its copies; ours must be closed, or the client would
     * never see the end of Stdout and Stderr. */
    close_streams(in, out, err);
    int ws;
    waitpid(pid, &ws, 0);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

static void serve_channel(lc_receiver *r)
{
    lc_msg *req;
    while (lc_recv(r, &req, -1) == 0) {
        const char *cmd;
        int in, out, err;
        lc_sender *status_chan;
        /* F takes a stream's fd out of the message, S the Sender */
        if (lc_unpack(req, "{s:s, s:F, s:F, s:F, s:S}", "Cmd", &cmd, "Stdin", &in, "Stdout", &out, "Stderr",
                      &err, "StatusChan", &status_chan) != 0) {
            fprintf(stderr, "rexec_server: not a RemoteCommand; ignored\n");
            lc_msg_free(req);
            continue;
        }
        int status = run(req, in, out, err, cmd);
        printf("rexec_server: %s -> status %d\n", cmd, status);
        fflush(stdout);
        lc_msg *ans = lc_pack("{s:i}", "Status", status);
        if (lc_send(status_chan, ans, 5000) != 0)
            lc_msg_free(ans);
        lc_sender_release(status_chan);
        lc_msg_free(req);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: rexec_server URL [SESSIONS]\n");
        return 2;
    }
    /* A command that exits without reading all of Stdin leaves the library
     * writing into a closed socket: that must be an error, not our death. */
    signal(SIGPIPE, SIG_IGN);
    int sessions = argc == 3 ? atoi(argv[2]) : -1;
    lc_listener *l;
    lc_error e;
    if (lc_listen(argv[1], NULL, &l, &e) != 0) {
        fprintf(stderr, "rexec_server: %s\n", e.text);
        return 1;
    }
    char url[256];
    lc_listener_url(l, url, sizeof url);
    printf("%s\n", url);
    fflush(stdout);
    for (int n = 0; sessions < 0 || n < sessions; n++) {
        lc_session *s;
        if (lc_accept(l, &s, -1) != 0)
            break;
        lc_receiver *r;
        while (lc_session_receiver(s, &r, -1) == 0) {
            serve_channel(r);
            lc_receiver_release(r);
        }
        lc_session_free(s);
    }
    lc_listener_close(l);
    return 0;
}
