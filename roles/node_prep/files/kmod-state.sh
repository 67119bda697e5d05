#!/bin/sh
# Reports, for each kernel module named on the command line, one line "NAME STATE":
#   loaded   - a loadable module that is loaded now (/sys/module/NAME/initstate exists)
#   builtin  - compiled into the kernel (in modules.builtin, in /sys/module without initstate,
#              or its feature is visible although no module file exists)
#   available- a module file exists for the running kernel but it is not loaded (modprobe will work)
#   absent   - none of the above: the running kernel cannot provide it from here
# Read-only: it never loads anything. Works in container nodes, where /lib/modules is usually
# missing and /sys/module shows the host kernel.
set -u
kver=$(uname -r)
moddir=/lib/modules/$kver

feature_present() {
    # What a module provides, for built-in modules that leave no trace in /sys/module.
    case "$1" in
        overlay) grep -qw overlay /proc/filesystems ;;
        br_netfilter) [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ;;
        *) return 1 ;;
    esac
}

for name in "$@"; do
    dashed=$(echo "$name" | tr '_' '-')
    if [ -e "/sys/module/$name/initstate" ]; then
        state=loaded
    elif [ -d "/sys/module/$name" ]; then
        state=builtin
    elif [ -r "$moddir/modules.builtin" ] \
        && grep -Eq "/($name|$dashed)\.ko$" "$moddir/modules.builtin"; then
        state=builtin
    elif [ -d "$moddir" ] && [ -n "$(find "$moddir" \( -name "$name.ko*" -o -name "$dashed.ko*" \) -print -quit 2>/dev/null)" ]; then
        state=available
    elif feature_present "$name"; then
        state=builtin
    else
        state=absent
    fi
    echo "$name $state"
done
