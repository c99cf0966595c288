/*
 * crafted_peer URL - a libchan server answering with values that lchan's JSON
 * printer (tools/lchan/json.c) must render faithfully, though `lchan send`
 * cannot ask for them itself (tool_tests.sh json_output). Prints the bound
 * URL, then answers each request {"What": W, "R": <Sender>} on R:
 *
 *   "keys"  {"keys": {"bad\xff": 1, "a\0b": 2, 7: 3, "7": 4, "bad\uFFFD": 5},
 *            "bad\xfe": 6}       map keys: invalid UTF-8, NUL, collisions
 *   "times" {"y1": 0001-01-01T00:00:00Z, "y0": 0000-01-01T00:00:00.5Z,
 *            "y10000": 10000-01-01T00:00:00Z, "far": INT64_MAX/2 s,
 *            "neg": 0000-01-01T00:00:00Z minus 1 s}
 *   "body"  an opaque body "xyz" whose content type holds '"', '\', a
 *            newline, a control character and an invalid UTF-8 byte
 *
 * Runs until SIGTERM (exit 0).
 */
#include <libchan.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_term(int sig)
{
    (void)sig;
    _exit(0);
}

static lc_msg *answer(const char *what)
{
    lc_msg *m = lc_msg_new();
    if (m == NULL)
        return NULL;
    if (strcmp(what, "body") == 0) {
        if (lc_msg_set_body(m, "xyz", 3, "text/x\"q\\b\nl\x01" "c\xff") != 0)
            goto fail;
        return m;
    }
    lc_value *root = lc_new_map(m);
    if (root == NULL)
        goto fail;
    if (strcmp(what, "keys") == 0) {
        lc_value *k = lc_new_map(m);
        if (k == NULL || lc_map_set_value(m, k, lc_new_stringn(m, "bad\xff", 4), lc_new_int(m, 1)) != 0 ||
            lc_map_set_value(m, k, lc_new_stringn(m, "a\0b", 3), lc_new_int(m, 2)) != 0 ||
            lc_map_set_value(m, k, lc_new_int(m, 7), lc_new_int(m, 3)) != 0 ||
            lc_map_set_value(m, k, lc_new_string(m, "7"), lc_new_int(m, 4)) != 0 ||
            lc_map_set_value(m, k, lc_new_string(m, "bad\xEF\xBF\xBD"), lc_new_int(m, 5)) != 0 ||
            lc_map_set(m, root, "keys", k) != 0 ||
            lc_map_set_value(m, root, lc_new_stringn(m, "bad\xfe", 4), lc_new_int(m, 6)) != 0)
            goto fail;
    } else if (strcmp(what, "times") == 0) {
        const int64_t year0 = -62167219200LL; /* 0000-01-01T00:00:00Z */
        if (lc_map_set(m, root, "y1", lc_new_time(m, -62135596800LL, 0)) != 0 ||
            lc_map_set(m, root, "y0", lc_new_time(m, year0, 500000000)) != 0 ||
            lc_map_set(m, root, "y10000", lc_new_time(m, 253402300800LL, 0)) != 0 ||
            lc_map_set(m, root, "far", lc_new_time(m, INT64_MAX / 2, 7)) != 0 ||
            lc_map_set(m, root, "neg", lc_new_time(m, year0 - 1, 0)) != 0)
            goto fail;
    } else {
        if (lc_map_set(m, root, "Error", lc_new_string(m, "unknown What")) != 0)
            goto fail;
    }
    if (lc_msg_set_root(m, root) != 0)
        goto fail;
    return m;
fail:
    lc_msg_free(m);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: crafted_peer URL\n");
        return 2;
    }
    signal(SIGTERM, on_term);
    lc_listener *l;
    lc_error err;
    if (lc_listen(argv[1], NULL, &l, &err) != 0) {
        fprintf(stderr, "crafted_peer: %s\n", err.text);
        return 1;
    }
    char url[256];
    if (lc_listener_url(l, url, sizeof url) != 0)
        return 1;
    printf("%s\n", url);
    fflush(stdout);
    lc_session *s;
    while (lc_accept(l, &s, -1) == 0) {
        lc_receiver *r;
        while (lc_session_receiver(s, &r, -1) == 0) {
            lc_msg *req;
            while (lc_recv(r, &req, -1) == 0) {
                const char *what;
                lc_sender *reply;
                if (lc_unpack(req, "{s:s, s:S}", "What", &what, "R", &reply) == 0) {
                    lc_msg *a = answer(what);
                    if (a == NULL)
                        fprintf(stderr, "crafted_peer: cannot build the answer to %s\n", what);
                    else if (lc_send_last(reply, a, 5000) != 0)
                        lc_msg_free(a);
                    lc_sender_release(reply);
                }
                lc_msg_free(req);
            }
            lc_receiver_release(r);
        }
        lc_session_free(s);
    }
    return 0;
}
