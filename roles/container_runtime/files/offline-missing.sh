#!/bin/sh
# offline-missing.sh deb|rpm FILE...
# Prints the files whose package is not installed at exactly the file's version. Read-only.
set -eu
kind=$1
shift
for file in "$@"; do
    if [ "$kind" = deb ]; then
        want=$(dpkg-deb --show --showformat='${Package}=${Version}' "$file")
        name=${want%%=*}
        have=$(dpkg-query --show --showformat='${db:Status-Status}=${Version}' "$name" 2>/dev/null || true)
        [ "$have" = "installed=${want#*=}" ] || echo "$file"
    else
        nevra=$(rpm -qp --nosignature --queryformat '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}' "$file")
        rpm -q "$nevra" >/dev/null 2>&1 || echo "$file"
    fi
done
