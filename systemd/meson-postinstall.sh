#!/bin/sh
# Run by `meson install` into the running system, never for a staged install (DESTDIR):
# the steps a package's postinst takes, so that `systemctl start agend` works right after.
#   meson-postinstall.sh SYSUSERS_CONF TMPFILES_CONF   (the installed snippets)
# See docs/systemd.md, "Installing" and "Packaging".
set -eu
sysusers=$1
tmpfiles=$2

if [ "$(id -u)" -ne 0 ]; then
        echo "agend: not root, so no system user and no /etc/agend yet; as root run:" >&2
        echo "  systemd-sysusers $sysusers && systemd-tmpfiles --create $tmpfiles" >&2
        exit 0
fi
if ! command -v systemd-sysusers >/dev/null; then
        echo "agend: no systemd-sysusers here; create the user agend and /etc/agend as $sysusers and $tmpfiles say" >&2
        exit 0
fi
# Paths, not names: they work for any prefix, also one systemd does not search.
systemd-sysusers "$sysusers"                    # the user "agend"
systemd-tmpfiles --create "$tmpfiles"           # /etc/agend, a default agend.conf if none
journalctl --update-catalog
if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
fi
