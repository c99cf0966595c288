/*
 * worker_pool.c - a pool of worker threads behind a dispatcher, in one process.
 *
 * What it shows, using only the public API (libchan.h):
 *   - Channels carry channels. Each worker makes its own inbox channel and
 *     registers by sending the inbox's Sender to a registry channel:
 *         {"Worker": 2, "Inbox": <Sender>}
 *     Each client request carries a fresh reply channel's Sender:
 *         {"Op": "sum", "Args": [1, 2, 3], "Reply": <Sender>}
 *     and the worker answers on it:  {"Result": 6, "Worker": 2}
 *   - lc_select: the dispatcher waits on the registry and on the request
 *     channel at once. Until a worker has registered, the request case has a
 *     NULL channel, which lc_select ignores (a nil channel in Go), so requests
 *     simply wait in their queue.
 *   - Shutdown by reference counting: every client holds a reference to the
 *     request channel's Sender; when the last one is released the channel is
 *     closed, the dispatcher sees LC_EOF, closes the worker inboxes, and the
 *     workers see LC_EOF in turn. The registry closes the same way once every
 *     worker has registered.
 *
 * Usage: worker_pool [workers] [clients] [requests-per-client]   (default 4 3 5)
 * Exit status 0 when every request got its right answer and nothing leaked a
 * file descriptor.
 */
#include <libchan.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORKERS 64
#define MAX_CLIENTS 64
#define MAX_REQUESTS 100000

/* Generous deadlines: nothing here should ever wait this long, even under a
 * sanitizer; when something does, the program reports it instead of hanging. */
#define SEND_TIMEOUT_MS 10000
#define REPLY_TIMEOUT_MS 10000
#define IDLE_TIMEOUT_MS 10000

#define REQUEST_QUEUE 16 /* the request channel buffers this many requests */
#define INBOX_QUEUE 4    /* each worker's inbox buffers this many */

struct worker {
    pthread_t thread;
    int id;
    lc_sender *registry; /* this thread's own reference; released after registering */
    int served;          /* written by the worker, read by main after join */
    int errors;
};

struct client {
    pthread_t thread;
    int id;
    int requests;
    lc_sender *requests_to; /* this thread's own reference to the request channel */
    int answered;
    int failed;
};

struct dispatcher {
    pthread_t thread;
    lc_receiver *registry; /* owned by the dispatcher thread */
    lc_receiver *requests; /* owned by the dispatcher thread */
    int registered;
    int routed;
    int dropped;
    int ok; /* 1 when the dispatcher stopped the way it should */
};

static void die(const char *what, int code)
{
    fprintf(stderr, "worker_pool: %s: %s\n", what, lc_strerror(code));
    exit(1);
}

/* Open file descriptors, to check that the library gives every eventfd back. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* not counting the directory itself */
}

/* ---- workers ------------------------------------------------------------- */

/* Replies on `reply` and releases it. The reply channel is buffered (one
 * slot, made by the client), so this never waits for the client. */
static int send_reply(lc_sender *reply, lc_msg *answer, int worker_id)
{
    int rc = answer == NULL ? LC_ENOMEM : lc_send(reply, answer, SEND_TIMEOUT_MS);
    if (rc != 0) {
        fprintf(stderr, "worker %d: cannot reply: %s\n", worker_id, lc_strerror(rc));
        lc_msg_free(answer); /* a failed send leaves the message with us */
    }
    lc_sender_release(reply);
    return rc;
}

static void serve(struct worker *w, lc_msg *req)
{
    const char *op = NULL;
    lc_value *args = NULL;
    lc_sender *reply = NULL;
    lc_error err;

    /* Op and Args are borrowed from the message; Reply is taken out of it,
     * so it is ours to release after answering. */
    int rc = lc_unpack_ex(req, &err, "{s:s, s:v, s:S}", "Op", &op, "Args", &args, "Reply", &reply);
    if (rc != 0) {
        /* Nothing was taken: freeing the request releases its reply channel,
         * and the client sees LC_EOF instead of waiting for its timeout. */
        fprintf(stderr, "worker %d: malformed request: %s\n", w->id, err.text);
        w->errors++;
        lc_msg_free(req);
        return;
    }

    const char *problem = NULL;
    int64_t sum = 0;
    if (strcmp(op, "sum") != 0) {
        problem = "unknown op";
    } else if (lc_value_type(args) != LC_ARRAY) {
        problem = "Args is not an array";
    } else {
        for (size_t i = 0; i < lc_value_len(args); i++) {
            lc_value *a = lc_array_get(args, i);
            if (lc_value_type(a) != LC_INT) {
                problem = "Args holds a non-integer";
                break;
            }
            sum += lc_value_int(a);
        }
    }
    lc_msg_free(req); /* op and args point into it: done with them */

    lc_msg *answer = problem != NULL
        ? lc_pack("{s:s, s:i}", "Error", problem, "Worker", w->id)
        : lc_pack("{s:I, s:i}", "Result", sum, "Worker", w->id);
    if (send_reply(reply, answer, w->id) == 0 && problem == NULL)
        w->served++;
    else
        w->errors++;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    lc_receiver *inbox_r = NULL;
    lc_sender *inbox_s = NULL;

    int rc = lc_pipe(&inbox_r, &inbox_s, INBOX_QUEUE);
    if (rc != 0) {
        fprintf(stderr, "worker %d: lc_pipe: %s\n", w->id, lc_strerror(rc));
        w->errors++;
        lc_sender_release(w->registry);
        return NULL;
    }

    /* Register: the message takes our inbox Sender ("S"), even if packing fails. */
    lc_msg *reg = lc_pack("{s:i, s:S}", "Worker", w->id, "Inbox", inbox_s);
    rc = reg == NULL ? LC_ENOMEM : lc_send(w->registry, reg, SEND_TIMEOUT_MS);
    if (rc != 0) {
        fprintf(stderr, "worker %d: cannot register: %s\n", w->id, lc_strerror(rc));
        lc_msg_free(reg);
        w->errors++;
    }
    /* Our last use of the registry; once every worker is done with it, the
     * channel closes by itself. */
    lc_sender_release(w->registry);
    w->registry = NULL;

    if (rc == 0) {
        for (;;) {
            lc_msg *req = NULL;
            rc = lc_recv(inbox_r, &req, -1); /* the dispatcher closes the inbox to stop us */
            if (rc == LC_EOF)
                break;
            if (rc != 0) {
                fprintf(stderr, "worker %d: lc_recv: %s\n", w->id, lc_strerror(rc));
                w->errors++;
                break;
            }
            serve(w, req);
        }
    }
    printf("worker %d: inbox closed, stopping after %d requests\n", w->id, w->served);
    lc_receiver_release(inbox_r);
    return NULL;
}

/* ---- the dispatcher ------------------------------------------------------ */

static void *dispatcher_main(void *arg)
{
    struct dispatcher *d = arg;
    lc_sender *inbox[MAX_WORKERS];
    int inbox_id[MAX_WORKERS];
    int nworkers = 0, next = 0;
    int registry_open = 1, requests_open = 1;
    int failed = 0;

    printf("dispatcher: waiting for workers and requests\n");
    while (registry_open || requests_open) {
        lc_case cases[2] = {
            { .op = LC_CASE_RECV, .receiver = registry_open ? d->registry : NULL },
            /* Requests wait in their queue until someone can serve them. */
            { .op = LC_CASE_RECV,
              .receiver = requests_open && (nworkers > 0 || !registry_open) ? d->requests : NULL },
        };
        int i = lc_select(cases, 2, IDLE_TIMEOUT_MS);
        if (i < 0) {
            fprintf(stderr, "dispatcher: lc_select: %s\n", lc_strerror(i));
            failed = 1;
            break;
        }
        lc_msg *m = cases[i].msg;

        if (i == 0) { /* the registry */
            if (cases[0].result == LC_EOF) {
                printf("dispatcher: registry closed, %d workers in the pool\n", nworkers);
                registry_open = 0;
                continue;
            }
            int id = -1;
            lc_sender *s = NULL;
            int rc = lc_unpack(m, "{s:i, s:S}", "Worker", &id, "Inbox", &s);
            lc_msg_free(m);
            if (rc != 0) {
                fprintf(stderr, "dispatcher: bad registration: %s\n", lc_strerror(rc));
                failed = 1;
                continue;
            }
            if (nworkers == MAX_WORKERS) {
                fprintf(stderr, "dispatcher: pool full, turning worker %d away\n", id);
                lc_sender_release(s); /* closes its inbox: that worker stops */
                failed = 1;
                continue;
            }
            inbox[nworkers] = s;
            inbox_id[nworkers] = id;
            nworkers++;
            d->registered++;
            printf("dispatcher: worker %d registered its inbox\n", id);
            continue;
        }

        /* the request channel */
        if (cases[1].result == LC_EOF) {
            printf("dispatcher: every client is done, closing the worker inboxes\n");
            requests_open = 0;
            continue;
        }
        if (nworkers == 0) {
            /* Registry closed with nobody in it. Dropping the request releases
             * its Reply channel, so the client gets LC_EOF at once. */
            fprintf(stderr, "dispatcher: no worker registered, dropping a request\n");
            lc_msg_free(m);
            d->dropped++;
            failed = 1;
            continue;
        }
        /* Round robin. The request moves as is, reply channel inside. */
        int w = next;
        next = (next + 1) % nworkers;
        int rc = lc_send(inbox[w], m, SEND_TIMEOUT_MS);
        if (rc != 0) {
            fprintf(stderr, "dispatcher: cannot hand a request to worker %d: %s\n", inbox_id[w],
                    lc_strerror(rc));
            lc_msg_free(m);
            d->dropped++;
            failed = 1;
            continue;
        }
        d->routed++;
    }

    /* Closing an inbox wakes its worker with LC_EOF once the queue is drained. */
    for (int w = 0; w < nworkers; w++) {
        int rc = lc_close(inbox[w]);
        if (rc != 0) {
            fprintf(stderr, "dispatcher: closing worker %d's inbox: %s\n", inbox_id[w], lc_strerror(rc));
            failed = 1;
        }
        lc_sender_release(inbox[w]);
    }
    lc_receiver_release(d->registry);
    lc_receiver_release(d->requests);
    d->registry = d->requests = NULL;
    d->ok = !failed;
    return NULL;
}

/* ---- clients ------------------------------------------------------------- */

static void *client_main(void *arg)
{
    struct client *c = arg;

    for (int n = 0; n < c->requests; n++) {
        int a = c->id + 1, b = n + 1, x = (c->id + 1) * (n + 2);
        int64_t expect = (int64_t)a + b + x;
        lc_receiver *reply_r = NULL;
        lc_sender *reply_s = NULL;

        /* A fresh reply channel per request, with one slot so the worker's
         * answer never waits for us. */
        int rc = lc_pipe(&reply_r, &reply_s, 1);
        if (rc != 0) {
            fprintf(stderr, "client %d: lc_pipe: %s\n", c->id, lc_strerror(rc));
            c->failed++;
            continue;
        }
        lc_msg *req = lc_pack("{s:s, s:[i, i, i], s:S}", "Op", "sum", "Args", a, b, x,
                              "Reply", reply_s); /* reply_s now belongs to the message */
        rc = req == NULL ? LC_ENOMEM : lc_send(c->requests_to, req, SEND_TIMEOUT_MS);
        if (rc != 0) {
            fprintf(stderr, "client %d: cannot send request: %s\n", c->id, lc_strerror(rc));
            lc_msg_free(req);
            lc_receiver_release(reply_r);
            c->failed++;
            continue;
        }

        lc_msg *ans = NULL;
        rc = lc_recv(reply_r, &ans, REPLY_TIMEOUT_MS);
        lc_receiver_release(reply_r);
        if (rc != 0) {
            /* LC_EOF: whoever held the request dropped it without answering. */
            fprintf(stderr, "client %d: no answer to 'sum [%d %d %d]': %s\n", c->id, a, b, x,
                    lc_strerror(rc));
            c->failed++;
            continue;
        }

        int64_t result = 0;
        const char *error = NULL;
        int worker = -1;
        lc_error err;
        rc = lc_unpack_ex(ans, &err, "{s?I, s?s, s:i}", "Result", &result, "Error", &error,
                          "Worker", &worker);
        if (rc != 0) {
            fprintf(stderr, "client %d: malformed answer: %s\n", c->id, err.text);
            c->failed++;
        } else if (error != NULL) {
            fprintf(stderr, "client %d: worker %d refused: %s\n", c->id, worker, error);
            c->failed++;
        } else if (result != expect) {
            fprintf(stderr, "client %d: 'sum [%d %d %d]' -> %" PRId64 ", expected %" PRId64 "\n",
                    c->id, a, b, x, result, expect);
            c->failed++;
        } else {
            printf("client %d asked 'sum [%d %d %d]' -> %" PRId64 ", answered by worker %d\n",
                   c->id, a, b, x, result, worker);
            c->answered++;
        }
        lc_msg_free(ans);
    }
    /* Our last request is out. When every client has let go, the request
     * channel closes and the dispatcher winds the pool down. */
    lc_sender_release(c->requests_to);
    c->requests_to = NULL;
    return NULL;
}

/* ---- main ---------------------------------------------------------------- */

static int parse_arg(const char *s, const char *what, int max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v < 1 || v > max) {
        fprintf(stderr, "worker_pool: %s must be a number from 1 to %d, not '%s'\n", what, max, s);
        fprintf(stderr, "usage: worker_pool [workers] [clients] [requests-per-client]\n");
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    int nworkers = argc > 1 ? parse_arg(argv[1], "workers", MAX_WORKERS) : 4;
    int nclients = argc > 2 ? parse_arg(argv[2], "clients", MAX_CLIENTS) : 3;
    int nrequests = argc > 3 ? parse_arg(argv[3], "requests per client", MAX_REQUESTS) : 5;
    if (argc > 4) {
        fprintf(stderr, "usage: worker_pool [workers] [clients] [requests-per-client]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* narration from several threads, one line at a time */

    int fds_before = count_fds();
    printf("worker_pool: %d workers, %d clients, %d requests each\n", nworkers, nclients, nrequests);

    static struct worker workers[MAX_WORKERS];
    static struct client clients[MAX_CLIENTS];
    struct dispatcher disp = { 0 };
    lc_sender *registry_s = NULL, *requests_s = NULL;
    int rc;

    /* Unbuffered: a worker's registration completes when the dispatcher takes it. */
    if ((rc = lc_pipe(&disp.registry, &registry_s, 0)) != 0)
        die("lc_pipe (registry)", rc);
    if ((rc = lc_pipe(&disp.requests, &requests_s, REQUEST_QUEUE)) != 0)
        die("lc_pipe (requests)", rc);

    /* The dispatcher thread now owns both Receivers. */
    if ((rc = pthread_create(&disp.thread, NULL, dispatcher_main, &disp)) != 0)
        die("pthread_create (dispatcher)", -rc); /* lc_strerror explains -errno too */

    /* Each thread gets its own reference to the channel it sends on; main then
     * drops its own, so the channels close when the last thread lets go. */
    for (int i = 0; i < nworkers; i++) {
        workers[i].id = i;
        workers[i].registry = lc_sender_retain(registry_s);
        if ((rc = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i])) != 0)
            die("pthread_create (worker)", -rc);
    }
    lc_sender_release(registry_s);

    for (int i = 0; i < nclients; i++) {
        clients[i].id = i;
        clients[i].requests = nrequests;
        clients[i].requests_to = lc_sender_retain(requests_s);
        if ((rc = pthread_create(&clients[i].thread, NULL, client_main, &clients[i])) != 0)
            die("pthread_create (client)", -rc);
    }
    lc_sender_release(requests_s);

    /* Clients finish first, then the dispatcher (request channel closed),
     * then the workers (inboxes closed). */
    int answered = 0, failed = 0;
    for (int i = 0; i < nclients; i++) {
        pthread_join(clients[i].thread, NULL);
        answered += clients[i].answered;
        failed += clients[i].failed;
    }
    pthread_join(disp.thread, NULL);
    int served = 0, worker_errors = 0;
    for (int i = 0; i < nworkers; i++) {
        pthread_join(workers[i].thread, NULL);
        served += workers[i].served;
        worker_errors += workers[i].errors;
    }

    int fds_after = count_fds();
    int total = nclients * nrequests;

    printf("\nsummary:\n");
    printf("  workers registered : %d of %d\n", disp.registered, nworkers);
    for (int i = 0; i < nworkers; i++)
        printf("    worker %d answered %d request%s\n", i, workers[i].served,
               workers[i].served == 1 ? "" : "s");
    printf("  requests           : %d sent, %d routed, %d answered correctly, %d failed\n", total,
           disp.routed, answered, failed);
    printf("  file descriptors   : %d open before, %d after\n", fds_before, fds_after);

    int ok = disp.ok && answered == total && failed == 0 && served == total && worker_errors == 0 &&
             disp.registered == nworkers && fds_before == fds_after;
    if (ok) {
        printf("worker_pool: OK, %d/%d requests answered by %d worker%s\n", answered, total, nworkers,
               nworkers == 1 ? "" : "s");
        return 0;
    }
    printf("worker_pool: FAILED (%d/%d requests answered, %d worker errors%s)\n", answered, total,
           worker_errors, fds_before != fds_after ? ", file descriptors leaked" : "");
    return 1;
}
