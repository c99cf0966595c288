/*
 * map.c - small open-addressing maps, uint64 key -> pointer (src/session):
 * stream ids, peer references, passed fds.
 */
#include "session_internal.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

void *lc__map_get(const lc_map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = mix64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].val == NULL)
            return NULL;
        if (m->slots[i].key == key && m->slots[i].val != LC_MAP_TOMB)
            return m->slots[i].val;
    }
}

int lc__map_put(lc_map *m, uint64_t key, void *val)
{
    if ((m->used + 1) * 4 >= m->cap * 3) {
        /* sized for the live entries only: a table that fills up with
         * tombstones (streams opened and ended all session long) is rebuilt
         * at its size, not doubled (it grew with every stream ever opened,
         * and so did every scan of it) */
        size_t ncap = 16;
        while ((m->len + 1) * 2 >= ncap)
            ncap *= 2;
        lc_map n = { calloc(ncap, sizeof *n.slots), ncap, 0, 0 };
        if (n.slots == NULL)
            return LC_ENOMEM;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].val != NULL && m->slots[i].val != LC_MAP_TOMB)
                lc__map_put(&n, m->slots[i].key, m->slots[i].val);
        free(m->slots);
        *m = n;
    }
    for (size_t i = mix64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].val == NULL || m->slots[i].val == LC_MAP_TOMB) {
            if (m->slots[i].val == NULL)
                m->used++;
            m->slots[i].key = key;
            m->slots[i].val = val;
            m->len++;
            return 0;
        }
        if (m->slots[i].key == key) {
            m->slots[i].val = val;
            return 0;
        }
    }
}

void *lc__map_del(lc_map *m, uint64_t key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = mix64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].val == NULL)
            return NULL;
        if (m->slots[i].key == key && m->slots[i].val != LC_MAP_TOMB) {
            void *v = m->slots[i].val;
            m->slots[i].val = LC_MAP_TOMB;
            m->len--;
            /* A tombstone followed by an empty slot ends no probe that
             * matters: it and the tombstones before it become empty. Streams
             * come and go every round trip with a fresh reply channel; the
             * table was rebuilt every few of them. */
            size_t mask = m->cap - 1;
            for (size_t j = i; m->slots[(j + 1) & mask].val == NULL && m->slots[j].val == LC_MAP_TOMB;
                 j = (j - 1) & mask) {
                m->slots[j].val = NULL;
                m->used--;
            }
            return v;
        }
    }
}

void lc__map_free(lc_map *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

