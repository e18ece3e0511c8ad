#!/bin/sh
# Installs ferry from this folder on a Linux server with systemd.
#
#   sudo ./install.sh              install (or upgrade: configuration is kept)
#   ./install.sh --root DIR        the same files under DIR, without creating
#                                  the user or touching systemd (to inspect
#                                  or to package)
#
# What goes where:
#   /usr/local/bin/ferry                        the binary
#   /usr/local/sbin/ferry-admin                 ferry as the service runs it (check, status, ...)
#   /usr/lib/ferry/plugins/*.wasm               the stock plugins (drop more here)
#   /var/cache/ferry/*.cwasm                    their compiled code (made for this build)
#   /etc/systemd/system/ferry-{run,serve}@.service
#   /etc/ferry/                                 pipeline files and their .env (root:ferry, 0640)
#   /etc/ferry/examples/                        the stock pipeline files and ferry.env.example
#   /var/lib/ferry/<pipeline>/                  the ledger (created by systemd, StateDirectory=)
#   /usr/share/doc/ferry/README.md
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=""
if [ "${1:-}" = "--root" ]; then
    [ -n "${2:-}" ] || { echo "usage: $0 [--root DIR]" >&2; exit 2; }
    root=$(mkdir -p "$2" && cd "$2" && pwd)
elif [ -n "${1:-}" ]; then
    echo "usage: $0 [--root DIR]" >&2
    exit 2
elif [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo ./install.sh), or use --root DIR" >&2
    exit 1
fi

install -d -m 0755 "$root/usr/local/bin" "$root/usr/local/sbin" "$root/usr/lib/ferry/plugins" "$root/usr/share/doc/ferry" \
    "$root/etc/systemd/system"
install -m 0755 "$here/bin/ferry" "$root/usr/local/bin/ferry"
install -m 0755 "$here/ferry-admin" "$root/usr/local/sbin/ferry-admin"
install -m 0644 "$here"/plugins/*.wasm "$root/usr/lib/ferry/plugins/"
install -m 0644 "$here"/systemd/*.service "$root/etc/systemd/system/"
install -m 0644 "$here/README.md" "$root/usr/share/doc/ferry/README.md"
install -d -m 0750 "$root/etc/ferry" "$root/etc/ferry/examples"
install -m 0640 "$here"/pipelines/*.toml "$here/ferry.env.example" "$root/etc/ferry/examples/"
install -d -m 0750 "$root/var/cache/ferry" "$root/var/lib/ferry"
cp "$here"/cache/*.cwasm "$root/var/cache/ferry/"

if [ -z "$root" ]; then
    if ! id ferry >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/ferry --no-create-home \
            --shell /usr/sbin/nologin --comment "ferry uploader" ferry
    fi
    chgrp -R ferry /etc/ferry
    chown -R ferry:ferry /var/cache/ferry /var/lib/ferry
    systemctl daemon-reload
fi

cat <<NEXT
ferry $("$root/usr/local/bin/ferry" --version | cut -d' ' -f2) installed${root:+ under $root}.

Next:
  1. cp /etc/ferry/examples/sidexis-s3.toml /etc/ferry/sidexis-s3.toml
     cp /etc/ferry/examples/ferry.env.example /etc/ferry/sidexis-s3.env
     and fill in the .env (chgrp ferry, chmod 0640).
  2. Check it as the service will run it:  ferry-admin check sidexis-s3
  3. systemctl enable --now ferry-run@sidexis-s3     (or ferry-serve@ with [serve])
     journalctl -u ferry-run@sidexis-s3 -f;  ferry-admin status sidexis-s3
NEXT
