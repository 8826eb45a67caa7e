/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"

struct HashmapSlot {
        const char *key;        /* NULL: empty; TOMBSTONE: removed */
        void *value;
        uint64_t hash;          /* so that a probe past other keys reads no key (a cache miss each) */
};

static const char tombstone[1];
#define TOMBSTONE tombstone

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
        free(h->slots);
        *h = (Hashmap) {};
}

static bool live(const HashmapSlot *s) {
        return s->key && s->key != TOMBSTONE;
}

/* The slot holding key, or NULL. */
static HashmapSlot *find(const Hashmap *h, const char *key, uint64_t hash) {
        if (h->n_slots == 0)
                return NULL;
        size_t mask = h->n_slots - 1;
        for (size_t i = hash & mask;; i = (i + 1) & mask) {
                HashmapSlot *s = &h->slots[i];
                if (!s->key)
                        return NULL;
                if (s->hash == hash && s->key != TOMBSTONE && (s->key == key || strcmp(s->key, key) == 0))
                        return s;
        }
}

/* Rebuilds the table with room for at least want entries at load ≤ 1/2, dropping tombstones. */
static int rehash(Hashmap *h, size_t want) {
        size_t n = 64;
        while (n < want * 2)
                n *= 2;
        HashmapSlot *slots = calloc(n, sizeof(*slots));
        if (!slots)
                return -ENOMEM;
        for (size_t j = 0; j < h->n_slots; j++) {
                const HashmapSlot *s = &h->slots[j];
                if (!live(s))
                        continue;
                size_t i = s->hash & (n - 1);
                while (slots[i].key)
                        i = (i + 1) & (n - 1);
                slots[i] = *s;
        }
        free(h->slots);
        h->slots = slots;
        h->n_slots = n;
        h->n_used = h->size;
        return 0;
}

int hashmap_put(Hashmap *h, const char *key, void *value) {
        uint64_t hash = hash_string(key);
        if (find(h, key, hash))
                return -EEXIST;
        if ((h->n_used + 1) * 4 > h->n_slots * 3) {
                int r = rehash(h, h->size + 1);
                if (r < 0)
                        return r;
        }
        size_t mask = h->n_slots - 1, i = hash & mask;
        while (live(&h->slots[i]))
                i = (i + 1) & mask;
        if (!h->slots[i].key)
                h->n_used++;    /* a tombstone reused was counted already */
        h->slots[i] = (HashmapSlot) { .key = key, .value = value, .hash = hash };
        h->size++;
        return 0;
}

void *hashmap_get(const Hashmap *h, const char *key) {
        HashmapSlot *s = find(h, key, hash_string(key));
        return s ? s->value : NULL;
}

void *hashmap_remove(Hashmap *h, const char *key) {
        HashmapSlot *s = find(h, key, hash_string(key));
        if (!s)
                return NULL;
        void *v = s->value;
        /* A tombstone keeps later entries of the probe sequence reachable and iteration in
         * progress valid; the next rehash drops it. */
        *s = (HashmapSlot) { .key = TOMBSTONE };
        h->size--;
        return v;
}

bool hashmap_iterate(const Hashmap *h, HashmapIter *i, void **ret_value) {
        if (!i->started) {
                i->started = true;
                i->slot = 0;
        }
        for (; i->slot < h->n_slots; i->slot++)
                if (live(&h->slots[i->slot])) {
                        *ret_value = h->slots[i->slot++].value;
                        return true;
                }
        return false;
}

void *hashmap_uid_entry(Hashmap *h, uint32_t uid, size_t size, bool create) {
        /* The uid in decimal, as "%u" writes it, without snprintf (two calls per cycle). */
        char key[HASHMAP_UID_KEY_SIZE] = {}, digits[10];
        size_t n = 0;
        do
                digits[n++] = (char) ('0' + uid % 10);
        while ((uid /= 10) > 0);
        for (size_t i = 0; i < n; i++)
                key[i] = digits[n - 1 - i];
        char *e = hashmap_get(h, key);
        if (e || !create)
                return e;
        assert(size >= sizeof(key));
        e = calloc(1, size);
        if (!e)
                return NULL;
        memcpy(e, key, sizeof(key));    /* the key lives in the entry */
        if (hashmap_put(h, e, e) < 0) {
                free(e);
                return NULL;
        }
        return e;
}
