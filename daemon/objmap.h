/* SPDX-License-Identifier: MIT */
#pragma once

/* A hash set of objects that carry their own key (a lease its id, a resource its name):
 * the two maps that hold one entry per lease at a million leases (issue 12, compact
 * per-lease memory). A slot is the object pointer and a 32-bit hash, 12 bytes, half of
 * Hashmap's 24 (key, value, 64-bit hash): the key is read from the object, which a hit
 * reads anyway, and the stored hash keeps probes past other objects and every rehash from
 * touching them. Open addressing, linear probing, tombstones, at most 3/4 full.
 *
 * The caller hashes the key (objmap_hash_string() for text) and says how an object
 * compares with a key (ObjMap.eq). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ObjMapSlot ObjMapSlot;
typedef struct ObjMap {
        ObjMapSlot *slots;      /* private */
        size_t n_slots;         /* private: 0 or a power of two */
        size_t n_used;          /* private: entries and tombstones */
        size_t size;            /* ro */
        bool (*eq)(const void *obj, const void *key);  /* private */
} ObjMap;

void objmap_init(ObjMap *m, bool (*eq)(const void *obj, const void *key));
/* Frees the map's memory, not the objects. */
void objmap_done(ObjMap *m);
/* 0, -EEXIST (an object with an equal key is in), -ENOMEM. */
int objmap_put(ObjMap *m, uint32_t hash, const void *key, void *obj);
void *objmap_get(const ObjMap *m, uint32_t hash, const void *key);
/* Returns the removed object or NULL. */
void *objmap_remove(ObjMap *m, uint32_t hash, const void *key);

/* FNV-1a, 32 bits. */
uint32_t objmap_hash_string(const char *s);

/* Iteration as hashmap_iterate(): i starts zeroed; the map must not change during it,
 * except for removing the object just returned. */
typedef struct ObjMapIter {
        size_t slot;
} ObjMapIter;
bool objmap_iterate(const ObjMap *m, ObjMapIter *i, void **ret_obj);
