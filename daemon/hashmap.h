/* SPDX-License-Identifier: MIT */
#pragma once

/* A string-keyed hash map of borrowed keys and values: the key must live as long as its
 * entry (the daemon keys resources and leases by a name stored in the object itself).
 * Open addressing (linear probing, tombstones), kept at most 3/4 full: 24 bytes a slot
 * (key, value, hash) and no allocation per entry, about 43 bytes an entry against 56 for
 * chained buckets (issue 12, compact per-lease memory); lookups stay O(1). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct HashmapSlot HashmapSlot;
typedef struct Hashmap {
        HashmapSlot *slots;     /* private */
        size_t n_slots;         /* private: 0 or a power of two */
        size_t n_used;          /* private: entries and tombstones */
        size_t size;            /* ro */
} Hashmap;

void hashmap_init(Hashmap *h);
/* Frees the map's memory, not the keys or values. */
void hashmap_done(Hashmap *h);
/* 0, -EEXIST, -ENOMEM. */
int hashmap_put(Hashmap *h, const char *key, void *value);
void *hashmap_get(const Hashmap *h, const char *key);
/* Returns the removed value or NULL. */
void *hashmap_remove(Hashmap *h, const char *key);

/* Iteration: i starts at 0 and is updated; returns false at the end. The map must not
 * change during iteration, except for removing the entry just returned. */
typedef struct HashmapIter {
        size_t slot;
        bool started;
} HashmapIter;
bool hashmap_iterate(const Hashmap *h, HashmapIter *i, void **ret_value);

/* Tables keyed by uid (per-uid counts and limits): an entry is a struct of `size` bytes
 * whose first member is `char key[HASHMAP_UID_KEY_SIZE]`, the uid in decimal, which the
 * table keys by. Returns the uid's entry; with create, a new zeroed one if it has none.
 * NULL: none (or out of memory). The caller removes and frees entries
 * (hashmap_remove(h, entry->key), free()). */
#define HASHMAP_UID_KEY_SIZE 16
void *hashmap_uid_entry(Hashmap *h, uint32_t uid, size_t size, bool create);
