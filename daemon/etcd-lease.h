/* SPDX-License-Identifier: MIT */
#pragma once

/* The lease keeper: one etcd lease for this agend, granted, kept alive by periodic
 * keepalive calls (every TTL/3), and — the part that matters for safety — a deadline on the
 * local monotonic clock before which the lease certainly still exists in etcd.
 *
 * Why the deadline is safe: etcd's leader refreshes a lease to its TTL when it receives a
 * keepalive, which is after we sent it. So "send time of the last keepalive that etcd
 * answered with TTL t" + t is no later than the earliest moment etcd can expire the lease
 * (leader changes only extend it). The keeper subtracts a margin for clock-rate differences
 * and declares the lease LOST at that deadline if no later keepalive was answered — so the
 * holder hears it before etcd could delete the lease's keys and grant them to anyone else.
 *
 * States, reported through the callback on every change:
 *   GRANTING  asking etcd for a lease (at start, and again after LOST, with back-off)
 *   ALIVE     the lease exists; keepalives are answered
 *   TROUBLE   a keepalive failed or is unanswered after an interval; the lease still exists
 *             until the deadline; retried often
 *   LOST      the deadline passed without an answer, or etcd said the lease is gone:
 *             everything attached to it must be considered deleted. A new lease follows
 *             (GRANTING, then ALIVE with a new id). */

#include <stdint.h>

#include "etcd-client.h"
#include "usec.h"

typedef enum EtcdLeaseState {
        ETCD_LEASE_GRANTING,
        ETCD_LEASE_ALIVE,
        ETCD_LEASE_TROUBLE,
        ETCD_LEASE_LOST,
        _ETCD_LEASE_STATE_MAX,
} EtcdLeaseState;

typedef struct EtcdLeaseKeeper EtcdLeaseKeeper;

/* error: why TROUBLE or LOST (negative errno), else 0. id: the lease (0 in GRANTING). May
 * free the keeper. */
typedef void (*EtcdLeaseFn)(EtcdLeaseKeeper *k, EtcdLeaseState state, int64_t id, int error, void *userdata);

typedef struct EtcdLeaseOptions {
        int64_t ttl_sec;                /* asked for; etcd may grant more */
        usec_t margin;                  /* 0 = min(TTL/5, 1 s) */
        usec_t keepalive_interval;      /* 0 = TTL/3 */
        usec_t retry_interval;          /* after a failure; 0 = min(TTL/10, 500 ms) */
        int64_t adopt_id;               /* a lease of an earlier process to keep alive instead
                                         * of granting one, if etcd still has it; 0 = none */
} EtcdLeaseOptions;

/* Starts granting at once. Free the keeper before its client. */
int etcd_lease_keeper_new(EtcdClient *c, const EtcdLeaseOptions *o, EtcdLeaseFn cb, void *userdata,
                          EtcdLeaseKeeper **ret);
/* Stops; with revoke, asks etcd (fire and forget) to revoke the lease, deleting its keys now
 * rather than at TTL. NULL-safe, returns NULL. Also from the callback. */
EtcdLeaseKeeper *etcd_lease_keeper_free(EtcdLeaseKeeper *k, bool revoke);

EtcdLeaseState etcd_lease_keeper_get_state(const EtcdLeaseKeeper *k);
int64_t etcd_lease_keeper_get_id(const EtcdLeaseKeeper *k);     /* 0 unless ALIVE or TROUBLE */
int64_t etcd_lease_keeper_get_ttl(const EtcdLeaseKeeper *k);    /* as granted, s */
/* CLOCK_MONOTONIC µs until which the lease surely exists; 0 unless ALIVE or TROUBLE. */
usec_t etcd_lease_keeper_get_deadline(const EtcdLeaseKeeper *k);
const char *etcd_lease_state_to_string(EtcdLeaseState s);
