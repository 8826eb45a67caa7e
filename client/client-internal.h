/* SPDX-License-Identifier: MIT */
#pragma once

#include "agen/agen.h"
#include "conn.h"
#include "gen-internal.h"

/* The control connection, reconnected if it was lost. Borrowed. */
int client_control(agen_client *c, Conn **ret);
/* A lease generator holds the client from its creation until it is freed. */
void client_lease_attach(agen_client *c);
void client_lease_detach(agen_client *c);
/* Inherited across fork(): dead in this process. */
bool client_is_forked(agen_client *c);
/* How long a lease generator keeps trying to reach agend (reconnect, release), s. */
extern double lease_reconnect_window;
