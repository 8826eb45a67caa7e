/* SPDX-License-Identifier: MIT */
#pragma once

/* docs/io.agend.Lease.varlink, compiled in (see daemon/meson.build). */
extern const char interface_io_agend_lease[];
