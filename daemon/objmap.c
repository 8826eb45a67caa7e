/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "objmap.h"

/* The pointer in two 32-bit halves keeps the slot at 12 bytes with 4-byte alignment (a
 * pointer member would pad it to 16). */
struct ObjMapSlot {
        uint32_t hash;
        uint32_t lo, hi;        /* the object; 0/0: empty; TOMBSTONE: removed */
};

static const char tombstone[1];

static uintptr_t slot_ptr(const ObjMapSlot *s) {
        return (uintptr_t) (((uint64_t) s->hi << 32) | s->lo);
}

static void slot_set(ObjMapSlot *s, uint32_t hash, const void *obj) {
        uint64_t p = (uintptr_t) obj;
        *s = (ObjMapSlot) { .hash = hash, .lo = (uint32_t) p, .hi = (uint32_t) (p >> 32) };
}

static bool slot_empty(const ObjMapSlot *s) {
        return slot_ptr(s) == 0;
}

static bool slot_live(const ObjMapSlot *s) {
        uintptr_t p = slot_ptr(s);
        return p != 0 && p != (uintptr_t) tombstone;
}

uint32_t objmap_hash_string(const char *s) {
        uint32_t h = 2166136261u;
        for (; *s; s++) {
                h ^= (unsigned char) *s;
                h *= 16777619u;
        }
        return h;
}

void objmap_init(ObjMap *m, bool (*eq)(const void *obj, const void *key)) {
        *m = (ObjMap) { .eq = eq };
}

void objmap_done(ObjMap *m) {
        free(m->slots);
        *m = (ObjMap) { .eq = m->eq };
}

static ObjMapSlot *find(const ObjMap *m, uint32_t hash, const void *key) {
        if (m->n_slots == 0)
                return NULL;
        size_t mask = m->n_slots - 1;
        for (size_t i = hash & mask;; i = (i + 1) & mask) {
                ObjMapSlot *s = &m->slots[i];
                if (slot_empty(s))
                        return NULL;
                if (s->hash == hash && slot_live(s) && m->eq((const void *) slot_ptr(s), key))
                        return s;
        }
}

/* Room for at least want entries at load ≤ 1/2, tombstones dropped. The stored hashes
 * place every object again without reading it. */
static int rehash(ObjMap *m, size_t want) {
        size_t n = 64;
        while (n < want * 2)
                n *= 2;
        ObjMapSlot *slots = calloc(n, sizeof(*slots));
        if (!slots)
                return -ENOMEM;
        for (size_t j = 0; j < m->n_slots; j++) {
                const ObjMapSlot *s = &m->slots[j];
                if (!slot_live(s))
                        continue;
                size_t i = s->hash & (n - 1);
                while (!slot_empty(&slots[i]))
                        i = (i + 1) & (n - 1);
                slots[i] = *s;
        }
        free(m->slots);
        m->slots = slots;
        m->n_slots = n;
        m->n_used = m->size;
        return 0;
}

int objmap_put(ObjMap *m, uint32_t hash, const void *key, void *obj) {
        if (find(m, hash, key))
                return -EEXIST;
        if ((m->n_used + 1) * 4 > m->n_slots * 3) {
                int r = rehash(m, m->size + 1);
                if (r < 0)
                        return r;
        }
        size_t mask = m->n_slots - 1, i = hash & mask;
        while (slot_live(&m->slots[i]))
                i = (i + 1) & mask;
        if (slot_empty(&m->slots[i]))
                m->n_used++;    /* a tombstone reused was counted already */
        slot_set(&m->slots[i], hash, obj);
        m->size++;
        return 0;
}

void *objmap_get(const ObjMap *m, uint32_t hash, const void *key) {
        ObjMapSlot *s = find(m, hash, key);
        return s ? (void *) slot_ptr(s) : NULL;
}

void *objmap_remove(ObjMap *m, uint32_t hash, const void *key) {
        ObjMapSlot *s = find(m, hash, key);
        if (!s)
                return NULL;
        void *obj = (void *) slot_ptr(s);
        /* Keeps later objects of the probe sequence reachable and an iteration valid. */
        slot_set(s, 0, tombstone);
        m->size--;
        return obj;
}

bool objmap_iterate(const ObjMap *m, ObjMapIter *i, void **ret_obj) {
        for (; i->slot < m->n_slots; i->slot++)
                if (slot_live(&m->slots[i->slot])) {
                        *ret_obj = (void *) slot_ptr(&m->slots[i->slot++]);
                        return true;
                }
        return false;
}
