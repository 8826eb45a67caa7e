#!/usr/bin/env bash
# Installs dependencies, builds, and starts agend.
#  - On a machine whose PID 1 is systemd, and as root: installs the build, enables
#    agend.socket and starts agend.service (then `systemctl start agend` works).
#  - Otherwise: runs agend in the foreground with its built-in default configuration
#    (socket and state directory as the daemon prints them at start). Ctrl-C stops it.
# Extra arguments are passed to agend in the foreground case (e.g. --grace 5).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
if [[ -d build ]]; then
        meson setup build --reconfigure >/dev/null
else
        meson setup build -Dbuildtype=release
fi
ninja -C build

if [[ -d /run/systemd/system && $(id -u) -eq 0 && -z ${AGEND_FOREGROUND:-} ]]; then
        # Units, sysusers.d/tmpfiles.d snippets and the catalog go under the prefix
        # (/usr/local/lib/systemd/system, ...), where systemd looks too. Its install script
        # (systemd/meson-postinstall.sh) then runs systemd-sysusers (the user "agend"),
        # systemd-tmpfiles (/etc/agend), journalctl --update-catalog and systemctl
        # daemon-reload, as a package's postinst would; docs/systemd.md.
        meson install -C build --quiet
        systemctl enable --now agend.socket
        # Restart, so a reinstall runs the new build; holders reclaim their leases.
        systemctl restart agend.service
        systemctl --no-pager status agend.service || true
        exit 0
fi

exec ./build/daemon/agend "$@"
