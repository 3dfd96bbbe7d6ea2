#!/usr/bin/env python3
"""Per-pass memory footprint of a tunnel daemon, from a valgrind lackey log
(`--tool=lackey --trace-mem=yes --trace-syscalls=yes`, see footprint.sh).

A pass is what one thread does between two waits: from an `epoll_wait`
returning to the next `epoll_wait` entered. Passes are grouped by the
system calls made in them (e.g. `read sendto`: a TUN packet encrypted and
sent); for each group, the medians of instructions executed and of the
distinct 64-byte cache lines and 4 KiB pages of code and of data touched.

Why: after an idle gap of 10 ms the vCPU's caches and TLB are cold, and
each distinct line or page costs tens to hundreds of nanoseconds (the idle
round trip's user time is memory, not instructions). Unlike a timing,
these counts are the same on every run of the same build: a change that
shrinks the packet path shows here even when the round trip is lost in the
host's noise.

  footprint.py LOG [--min N] [--syms BIN BASE PATTERN]

--syms lists, for the median pass of PATTERN (system call names separated
by spaces, as printed), the distinct code lines per function of BIN loaded
at BASE, then the distinct data lines per function that touched them first (hex; valgrind loads a position-independent binary at 0x108000).
"""
import bisect
import collections
import re
import subprocess
import sys

SYSCALL = re.compile(r'SYSCALL\[\d+,(\d+)\]\((\d+)\)\s+(.*)')
NAMES = {0: 'read', 1: 'write', 20: 'writev', 44: 'sendto', 45: 'recvfrom',
         46: 'sendmsg', 47: 'recvmsg', 202: 'futex', 228: None, 233: 'epoll_ctl',
         299: 'recvmmsg', 307: 'sendmmsg', 332: 'statx'}
EPOLL_WAIT = 232


def passes(path):
    """Yields (tid, pattern, [(kind, address)]) for every complete pass."""
    cur = None   # (tid, calls, accesses)
    for line in open(path, errors='replace'):
        kind = line[:2]
        if kind in ('I ', ' L', ' S', ' M'):
            if cur is not None:
                try:
                    cur[2].append((kind[1] if kind[0] == ' ' else 'I',
                                   int(line[3:].split(',', 1)[0], 16)))
                except ValueError:
                    pass
            continue
        m = SYSCALL.match(line)
        if not m:
            continue
        tid, nr, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        resumed = rest.startswith('...')
        if nr == EPOLL_WAIT and resumed and 'Success' in rest:
            cur = (tid, [], [])
        elif nr == EPOLL_WAIT and not resumed:
            if cur is not None and cur[0] == tid:
                yield tid, ' '.join(cur[1]) or '-', cur[2]
            cur = None
        elif cur is not None and cur[0] == tid and not resumed:
            name = NAMES.get(nr, str(nr))
            if name:   # clock_gettime is the vDSO natively: not counted
                cur[1].append(name)


def counts(acc):
    code = {a >> 6 for k, a in acc if k == 'I'}
    data = {a >> 6 for k, a in acc if k != 'I'}
    return (sum(1 for k, _ in acc if k == 'I'), len(code), len({c >> 6 for c in code}),
            len(data), len({d >> 6 for d in data}))


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def summary(path, least):
    groups = collections.defaultdict(list)
    for tid, pattern, acc in passes(path):
        groups[(tid, pattern)].append(counts(acc))
    print('%6s %-40s %5s %7s %7s %7s %7s %7s' % (
        'thread', 'system calls in the pass', 'n', 'instr', 'I-lines', 'I-pages',
        'D-lines', 'D-pages'))
    for (tid, pattern), rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if len(rows) < least:
            continue
        print('%6d %-40s %5d %7d %7d %7d %7d %7d' % (
            (tid, pattern[:40], len(rows)) + tuple(median([r[i] for r in rows]) for i in range(5))))


def symbols(path, binary, base, want):
    syms = []
    out = subprocess.run(['nm', '-n', '-C', binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        p = line.strip().split(' ', 2)
        if len(p) == 3 and p[0] and p[1] in 'tTwW':
            syms.append((int(p[0], 16) + base, re.sub(r'::h[0-9a-f]{16}$', '', p[2])))
    starts = [s[0] for s in syms]
    found = [acc for _, pattern, acc in passes(path) if pattern == want]
    if not found:
        sys.exit('no pass with the system calls: ' + want)
    found.sort(key=lambda acc: counts(acc)[1])
    code = collections.defaultdict(set)
    data = collections.defaultdict(set)
    seen = set()
    name = '?'
    for k, a in found[len(found) // 2]:
        if k != 'I':
            # A data line is charged to the function that touched it first.
            if a >> 6 not in seen:
                seen.add(a >> 6)
                data[name].add(a >> 6)
            continue
        i = bisect.bisect_right(starts, a) - 1
        name = syms[i][1] if i >= 0 and a - starts[i] < 1 << 20 else 'outside the binary'
        code[name].add(a >> 6)
    for what, lines in (('code', code), ('data', data)):
        print('median pass of %d: %d %s lines' % (
            len(found), sum(len(v) for v in lines.values()), what))
        for name, v in sorted(lines.items(), key=lambda kv: -len(kv[1])):
            print('%5d %s' % (len(v), name[:110]))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    least = 10
    if '--min' in argv:
        least = int(argv[argv.index('--min') + 1])
    if '--syms' in argv:
        i = argv.index('--syms')
        symbols(argv[1], argv[i + 1], int(argv[i + 2], 16), argv[i + 3])
    else:
        summary(argv[1], least)


if __name__ == '__main__':
    main(sys.argv)
