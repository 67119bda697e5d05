#!/bin/sh
# fs-type.sh PATH...
# Prints "PATH FSTYPE" for each path, using its nearest existing ancestor when the path does not
# exist yet (before the runtime's first start). Read-only.
set -eu
for path in "$@"; do
    probe=$path
    while [ ! -e "$probe" ] && [ "$probe" != / ]; do
        probe=$(dirname "$probe")
    done
    echo "$path $(stat -f -c %T "$probe")"
done
