#!/usr/bin/env bash
# Builds the .deb and checks it as an operator would meet it: contents, lintian, the unit's
# hardening, a real install on this machine (root, no systemd as PID 1), the installed binary
# running as the orchestron user with the installed config, an upgrade that keeps an edited
# conffile and the store, and a purge that removes user and data.
# Run by .ci/run as root. Leaves the machine as it found it (the package is purged).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n-- %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

[ "$(id -u)" = 0 ] || fail "needs root (it installs the package)"
if dpkg -s orchestron >/dev/null 2>&1; then dpkg --purge orchestron >/dev/null; fi

log "build"
cargo deb --no-build >/dev/null 2>&1 || cargo deb >/dev/null
deb=$(ls -t target/debian/orchestron_*_amd64.deb | head -1)
echo "$deb"

log "contents"
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/orchestron ./usr/lib/systemd/system/orchestron.service \
         ./etc/orchestron/config.yaml ./etc/orchestron/schemas/order.created.json \
         ./usr/share/doc/orchestron/README.md ./usr/share/doc/orchestron/copyright \
         ./usr/share/doc/orchestron/operations.md; do
  grep -q " $f\$" <<<"$contents" || fail "missing $f"
done
# (Outputs are captured before grep: with pipefail, `producer | grep -q` can fail on SIGPIPE.)
info=$(dpkg-deb --info "$deb")
grep -q 'Depends: .*adduser' <<<"$info" || fail "Depends lacks adduser"
conffiles=$(dpkg-deb --info "$deb" conffiles)
grep -qx /etc/orchestron/config.yaml <<<"$conffiles" || fail "config not a conffile"
for script in postinst postrm prerm; do
  text=$(dpkg-deb --info "$deb" "$script")
  grep -q 'deb-systemd' <<<"$text" || fail "$script lacks the systemd snippets"
done
grep -q '\${file:' packaging/config.yaml && ! grep -Eq 'api_keys: \["[0-9a-f]{16,}' packaging/config.yaml \
  || fail "packaged config must reference secrets, not hold them"

log "lintian"
lintian --fail-on error "$deb" | tee /tmp/orchestron-lintian.txt
# The man page is in the package (generated from the clap definitions).
! grep -q 'no-manual-page' /tmp/orchestron-lintian.txt || fail "lintian: no-manual-page"

log "unit hardening"
systemd-analyze security --offline=true --threshold=20 systemd/orchestron.service | tail -1

log "install"
dpkg -i "$deb" >/dev/null
getent passwd orchestron >/dev/null || fail "no orchestron user"
[ "$(stat -c '%a %U %G' /var/lib/orchestron)" = "750 orchestron orchestron" ] || fail "state dir"
[ "$(stat -c '%a %U %G' /etc/orchestron/tls)" = "750 root orchestron" ] || fail "tls dir"
[ "$(stat -c '%a %U %G' /etc/orchestron/credentials/api-key)" = "640 root orchestron" ] || fail "credential"
systemd-analyze verify /usr/lib/systemd/system/orchestron.service
for f in /usr/share/man/man1/orchestron.1.gz /usr/share/bash-completion/completions/orchestron \
         /usr/share/zsh/vendor-completions/_orchestron /usr/share/fish/vendor_completions.d/orchestron.fish; do
  [ -s "$f" ] || fail "not installed: $f"
done
zcat /usr/share/man/man1/orchestron.1.gz | grep -q 'check\\-config' || fail "the man page lacks check-config"
bash -c 'source /usr/share/bash-completion/completions/orchestron && complete -p orchestron' >/dev/null \
  || fail "the bash completion does not load"
help=$(/usr/bin/orchestron --help)
grep -q check-config <<<"$help" || fail "--help lacks check-config"
out=$(cd / && /usr/bin/orchestron check-config --config /etc/orchestron/config.yaml 2>&1 || true)
grep -q 'cannot read secret' <<<"$out" || fail "without its credentials the config must not load: $out"
CREDENTIALS_DIRECTORY=/etc/orchestron/credentials \
  /usr/bin/orchestron check-config --config /etc/orchestron/config.yaml

port=$(free_port); admin_port=$(free_port)
run_daemon() {
  (cd /var/lib/orchestron && exec setpriv --reuid=orchestron --regid=orchestron --init-groups -- env \
     CREDENTIALS_DIRECTORY=/etc/orchestron/credentials \
     ORCHESTRON_SERVER__LISTEN=127.0.0.1:$port ORCHESTRON_ADMIN__LISTEN=127.0.0.1:$admin_port \
     /usr/bin/orchestron serve --config /etc/orchestron/config.yaml) 2>/tmp/orchestron-deb.log &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.1; done
  cat /tmp/orchestron-deb.log; fail "installed daemon did not start"
}
stop_daemon() { kill -TERM "$pid"; wait "$pid" || fail "daemon exit status $?"; }

log "run as the orchestron user, with the installed config"
run_daemon
key=$(cat /etc/orchestron/credentials/api-key)
status=$(curl -s -o /tmp/orchestron-deb.out -w '%{http_code}' -X POST \
  "http://127.0.0.1:$port/api/events/order.created" -H "X-API-Key: $key" \
  -H 'Content-Type: application/json' -d '{"order_id": 42}')
[ "$status" = 202 ] || { cat /tmp/orchestron-deb.out; fail "POST answered $status"; }
stop_daemon
[ -f /var/lib/orchestron/orchestron.redb ] || fail "no store file"
[ "$(stat -c %U /var/lib/orchestron/orchestron.redb)" = orchestron ] || fail "store not owned by the service user"
CREDENTIALS_DIRECTORY=/etc/orchestron/credentials \
  orchestron outbox stats --offline --config /etc/orchestron/config.yaml --json | tee /tmp/orchestron-deb.stats
grep -q '"pending": 1' /tmp/orchestron-deb.stats || fail "the event is not in the outbox"

log "every syscall the daemon makes passes the unit's SystemCallFilter"
# The daemon's user writes the trace: a file left by an earlier run belongs to an earlier
# orchestron uid (purge deletes the user) and could not be opened.
rm -f /tmp/orchestron-deb.strace
(cd /var/lib/orchestron && exec setpriv --reuid=orchestron --regid=orchestron --init-groups -- env \
   CREDENTIALS_DIRECTORY=/etc/orchestron/credentials \
   ORCHESTRON_SERVER__LISTEN=127.0.0.1:$port ORCHESTRON_ADMIN__LISTEN=127.0.0.1:$admin_port \
   strace -f -qq -c -o /tmp/orchestron-deb.strace \
   /usr/bin/orchestron serve --config /etc/orchestron/config.yaml) 2>/tmp/orchestron-deb.log &
tracer=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
for _ in 1 2 3; do
  curl -s -o /dev/null -X POST "http://127.0.0.1:$port/api/events/order.created" -H "X-API-Key: $key" \
    -H 'Content-Type: application/json' -d '{"order_id": 7}'
done
curl -s -o /dev/null "http://127.0.0.1:$port/metrics"
curl -s -o /dev/null -H "Authorization: Bearer $(cat /etc/orchestron/credentials/admin-token)" \
  "http://127.0.0.1:$admin_port/admin/outbox"
daemon=$(pgrep -f '^/usr/bin/orchestron serve --config /etc/orchestron/config.yaml') \
  || { cat /tmp/orchestron-deb.log; fail "the traced daemon is not running"; }
kill -HUP "$daemon"; sleep 1; kill -TERM "$daemon"; wait "$tracer" || true
python3 packaging/syscalls.py /tmp/orchestron-deb.strace

log "upgrade keeps an edited conffile and the store"
echo "# edited by the operator" >> /etc/orchestron/config.yaml
cargo deb --no-build --deb-version 0.1.1-1 >/dev/null
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold target/debian/orchestron_0.1.1-1_amd64.deb >/dev/null
[ "$(dpkg-query -W -f '${Version}' orchestron)" = 0.1.1-1 ] || fail "not upgraded"
grep -q '# edited by the operator' /etc/orchestron/config.yaml || fail "conffile edit lost"
stats=$(CREDENTIALS_DIRECTORY=/etc/orchestron/credentials \
  orchestron outbox stats --offline --config /etc/orchestron/config.yaml --json)
grep -q '"pending": [1-9]' <<<"$stats" || fail "store lost on upgrade: $stats"
[ "$(cat /etc/orchestron/credentials/api-key)" = "$key" ] || fail "credential regenerated on upgrade"

log "remove keeps data; purge removes user and data"
dpkg --remove orchestron >/dev/null
[ -d /var/lib/orchestron ] || fail "remove deleted the data"
dpkg --purge orchestron >/dev/null
getent passwd orchestron >/dev/null && fail "user left after purge"
[ -e /var/lib/orchestron ] && fail "data left after purge"
rm -f target/debian/orchestron_0.1.1-1_amd64.deb
echo "package checks: OK"
