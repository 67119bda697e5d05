#!/bin/sh
# sysctl-state.sh KEY=VALUE...
# Compares each kernel parameter with the value wanted, one line a key, read-only:
#   same KEY              the running kernel has it at that value
#   differ KEY CURRENT    it has another value now, followed by a line "set KEY=VALUE"
#   absent KEY            /proc/sys has no such key (bridge keys without br_netfilter, say)
# Values are compared with their whitespace squeezed (sysctl prints ranges with tabs).
set -u
for pair in "$@"; do
    key=${pair%%=*}
    want=$(printf '%s\n' "${pair#*=}" | tr -s ' \t' '  ')
    path=/proc/sys/$(printf '%s\n' "$key" | tr . /)
    if [ ! -e "$path" ]; then
        printf 'absent %s\n' "$key"
        continue
    fi
    now=$(tr -s ' \t' '  ' < "$path")
    if [ "$now" = "$want" ]; then
        printf 'same %s\n' "$key"
    else
        printf 'differ %s %s\n' "$key" "$now"
        printf 'set %s=%s\n' "$key" "$want"
    fi
done
