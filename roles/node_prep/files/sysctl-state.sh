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
    want=$(echo "${pair#*=}" | tr -s ' \t' '  ')
    path=/proc/sys/$(echo "$key" | tr . /)
    if [ ! -e "$path" ]; then
        echo "absent $key"
        continue
    fi
    now=$(tr -s ' \t' '  ' < "$path")
    if [ "$now" = "$want" ]; then
        echo "same $key"
    else
        echo "differ $key $now"
        echo "set $key=$want"
    fi
done
