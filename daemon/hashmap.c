/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"

struct HashmapEntry {
        HashmapEntry *next;
        const char *key;
        void *value;
        uint64_t hash;
};

/* FNV-1a: keys are daemon-made ids and resource names; a client can pick resource
 * names, but a per-uid lease limit bounds how many it can make. */
static uint64_t hash_string(const char *s) {
        uint64_t h = 1469598103934665603ULL;
        for (; *s; s++) {
                h ^= (unsigned char) *s;
                h *= 1099511628211ULL;
        }
        return h;
}

void hashmap_init(Hashmap *h) {
        *h = (Hashmap) {};
}

void hashmap_done(Hashmap *h) {
        for (size_t b = 0; b < h->n_buckets; b++)
                for (HashmapEntry *e = h->buckets[b], *n; e; e = n) {
                        n = e->next;
                        free(e);
                }
        free(h->buckets);
        *h = (Hashmap) {};
}

static int grow(Hashmap *h) {
        size_t n = h->n_buckets ? h->n_buckets * 2 : 64;
        HashmapEntry **b = calloc(n, sizeof(*b));
        if (!b)
                return -ENOMEM;
        for (size_t i = 0; i < h->n_buckets; i++)
                for (HashmapEntry *e = h->buckets[i], *next; e; e = next) {
                        next = e->next;
                        size_t j = e->hash & (n - 1);
                        e->next = b[j];
                        b[j] = e;
                }
        free(h->buckets);
        h->buckets = b;
        h->n_buckets = n;
        return 0;
}

static HashmapEntry **find(const Hashmap *h, const char *key, uint64_t hash) {
        if (h->n_buckets == 0)
                return NULL;
        HashmapEntry **p = &h->buckets[hash & (h->n_buckets - 1)];
        for (; *p; p = &(*p)->next)
                if ((*p)->hash == hash && strcmp((*p)->key, key) == 0)
                        return p;
        return NULL;
}

int hashmap_put(Hashmap *h, const char *key, void *value) {
        uint64_t hash = hash_string(key);
        if (find(h, key, hash))
                return -EEXIST;
        if (h->size >= h->n_buckets) {
                int r = grow(h);
                if (r < 0)
                        return r;
        }
        HashmapEntry *e = malloc(sizeof(*e));
        if (!e)
                return -ENOMEM;
        size_t j = hash & (h->n_buckets - 1);
        *e = (HashmapEntry) { .next = h->buckets[j], .key = key, .value = value, .hash = hash };
        h->buckets[j] = e;
        h->size++;
        return 0;
}

void *hashmap_get(const Hashmap *h, const char *key) {
        HashmapEntry **p = find(h, key, hash_string(key));
        return p ? (*p)->value : NULL;
}

void *hashmap_remove(Hashmap *h, const char *key) {
        HashmapEntry **p = find(h, key, hash_string(key));
        if (!p)
                return NULL;
        HashmapEntry *e = *p;
        void *v = e->value;
        *p = e->next;
        free(e);
        h->size--;
        return v;
}

bool hashmap_iterate(const Hashmap *h, HashmapIter *i, void **ret_value) {
        if (!i->started) {
                i->started = true;
                i->bucket = 0;
                i->next = h->n_buckets ? h->buckets[0] : NULL;
        }
        while (!i->next) {
                if (++i->bucket >= h->n_buckets)
                        return false;
                i->next = h->buckets[i->bucket];
        }
        HashmapEntry *e = i->next;
        i->next = e->next;
        *ret_value = e->value;
        return true;
}
