#!/usr/bin/env python3
"""Checks that every syscall the daemon made under strace is allowed by the unit's filter.

Usage: syscalls.py STRACE_SUMMARY_FILE. The unit allows @system-service and denies
@privileged and @resources (systemd/orchestron.service); group names are expanded with
`systemd-analyze syscall-filter`. Exits 1 naming any syscall the filter would refuse.
"""
import re
import subprocess
import sys


def expand(*groups):
    seen, names, queue = set(), set(), list(groups)
    while queue:
        group = queue.pop()
        if group in seen:
            continue
        seen.add(group)
        listing = subprocess.run(["systemd-analyze", "syscall-filter", group],
                                 capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines()[1:]:
            item = line.strip()
            if not item or item.startswith("#"):
                continue
            if item.startswith("@"):
                queue.append(item)
            else:
                names.add(item)
    return names


def main():
    used = set()
    for line in open(sys.argv[1]):
        fields = line.split()
        if fields and re.fullmatch(r"[a-z_0-9]+", fields[-1]) and fields[-1] != "total" and fields[0][0].isdigit():
            used.add(fields[-1])
    # systemd always permits the @default group, whatever the filter says.
    allowed = expand("@system-service", "@default") - expand("@privileged", "@resources")
    refused = sorted(used - allowed)
    print(f"{len(used)} distinct syscalls used; refused by the unit's filter: {refused or 'none'}")
    sys.exit(1 if refused else 0)


main()
