#!/bin/bash
# Runs inside a Debian container booted with systemd (cargo xtask systemd): a coordinator on the
# container's loopback, a join token, then `lull-agent install` as an IT person would run it, and
# what the started service looks like. Everything goes to /lull-check.txt; the container then
# powers off.
exec > /lull-check.txt 2>&1
set -x
# A desktop's udev makes the input group; this minimal root has no udev.
getent group input || groupadd --system input
data=/var/lib/lull-coordinator
mkdir -p "$data"
lull-coordinator serve --data-dir "$data" --quic-listen 127.0.0.1:17443 \
    --http-listen 127.0.0.1:17080 > /coordinator.log 2>&1 &
for _ in $(seq 100); do
    grep -q 'agents on quic' /coordinator.log && break
    sleep 0.2
done
token=$(lull-coordinator token create --description container --address 127.0.0.1:17443 \
    --data-dir "$data" 2>&1)
echo "$token"
install=$(echo "$token" | grep -o 'lull-agent install .*')
# shellcheck disable=SC2086
lull-agent ${install#lull-agent } --binary /usr/local/bin/lull-agent --name container
for _ in $(seq 50); do
    lull-agent status --config /etc/lull/agent.toml 2>/dev/null | grep -q '(connected)' && break
    sleep 0.2
done
echo "== status"
lull-agent status --config /etc/lull/agent.toml
echo "== unit"
systemctl show lull-agent -p ActiveState -p SubState -p DynamicUser -p MainPID -p NRestarts
pid=$(systemctl show lull-agent -p MainPID --value)
echo "== process"
grep -E '^(Uid|Gid|Groups|CapEff|CapAmb):' "/proc/$pid/status"
echo "== input"
getent group input | cut -d: -f3
echo "== files"
stat -c '%u %a %n' /var/lib/private/lull/agent /var/lib/private/lull/agent/tls/agent.key.der
echo "== journal"
journalctl -u lull-agent --no-pager | tail -n 20
echo "== done"
systemctl poweroff
