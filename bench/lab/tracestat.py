#!/usr/bin/env python3
"""Summaries of a tracefs text trace (see trace.sh).

syscalls TRACE N: per thread and system call, the median on-CPU time from
entry to exit (time switched out excluded), and the median user time
between the exit of one call and the entry of the next; each also as the
mean of its lower 90%, which resolves differences below the trace's 1 us.

timeline TRACE TIDS_A TIDS_B: per ping (ping's sendto to its recvmsg), the
time between the legs through node A (TIDS_A, comma-separated) and node B:
A's thread running, A's sendto, B's thread running, B's TUN write and its
return, B's sendto, A's thread again, A's TUN write, ping's reply; and where B's
thread was woken (on the vCPU that woke it, or on the other one).
"""
import collections
import re
import sys

LINE = re.compile(r'\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)')
NAMES = {0: 'read', 1: 'write', 7: 'poll', 20: 'writev', 44: 'sendto', 45: 'recvfrom',
         47: 'recvmsg', 202: 'futex', 232: 'epoll_wait', 233: 'epoll_ctl', 299: 'recvmmsg'}
SENDTO, WRITE, WRITEV, RECVMSG = 44, 1, 20, 47
AGAIN = 100000   # added to a call's number when it returned EAGAIN


def events(path):
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        comm, tid, cpu, ts, ev, rest = m.groups()
        nr = re.search(r'NR (-?\d+)', rest)
        yield (comm, int(tid), int(cpu), float(ts) * 1e6, ev,
               int(nr.group(1)) if nr else None, rest)


def switch_pids(rest):
    return (int(re.search(r'prev_pid=(\d+)', rest).group(1)),
            int(re.search(r'next_pid=(\d+)', rest).group(1)))


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def low_mean(v):
    """The mean of the lower 90%: below the trace's 1 us resolution where a
    median is not, without the outliers (interrupts, preemption)."""
    v = sorted(v)[:max(1, len(v) * 9 // 10)]
    return sum(v) / len(v)


def syscalls(path, n):
    inside = {}    # tid -> [nr, on-CPU since (None while switched out), accumulated]
    after = {}     # tid -> (nr, exit time)
    dur = collections.defaultdict(list)
    gap = collections.defaultdict(list)
    for comm, tid, cpu, ts, ev, nr, rest in events(path):
        if ev == 'sched_switch':
            prev, nxt = switch_pids(rest)
            if prev in inside and inside[prev][1] is not None:
                inside[prev][2] += ts - inside[prev][1]
                inside[prev][1] = None
            if nxt in inside:
                inside[nxt][1] = ts
            after.pop(prev, None)   # a switch in user space: not a clean gap
        elif ev == 'sys_enter':
            if tid in after:
                pnr, t0 = after.pop(tid)
                gap[(tid, pnr, nr)].append(ts - t0)
            inside[tid] = [nr, ts, 0.0]
        elif ev == 'sys_exit' and tid in inside and inside[tid][1] is not None:
            nr, t0, acc = inside.pop(tid)
            if rest.endswith('= -11'):
                nr += AGAIN   # a call that found nothing: its own row
            dur[(tid, nr)].append(acc + ts - t0)
            after[tid] = (nr, ts)
    def name(nr):
        base = NAMES.get(nr % AGAIN, str(nr % AGAIN))
        return base + '/EAGAIN' if nr >= AGAIN else base
    print('on-CPU per system call (us, medians; means of the lower 90%):')
    for (tid, nr), v in sorted(dur.items()):
        if len(v) >= n / 10:
            print(f'  {tid:>7} {name(nr):>17}  n {len(v):5d}  {median(v):5.1f}  {low_mean(v):5.1f}')
    print('user time between calls (us, medians; means of the lower 90%):')
    for (tid, a, b), v in sorted(gap.items()):
        if len(v) >= n / 10:
            print(f'  {tid:>7} {name(a):>10} -> {name(b):10}  n {len(v):5d}  {median(v):5.1f}  {low_mean(v):5.1f}')


def timeline(path, tids_a, tids_b):
    a = {int(t) for t in tids_a.split(',')}
    b = {int(t) for t in tids_b.split(',')}
    pings, cur = [], None
    for comm, tid, cpu, ts, ev, nr, rest in events(path):
        if ev == 'sys_enter' and comm == 'ping' and nr == SENDTO:
            cur = {'ping sendto': ts}
            pings.append(cur)
            continue
        if cur is None:
            continue
        # A thread runs from its first event of its own, or from a switch
        # into it: after a wakeup on a halted vCPU the trace records no
        # switch from the idle task, only the thread's next system call.
        running = set()
        if ev == 'sched_switch':
            running.add(switch_pids(rest)[1])
        elif ev not in ('sched_waking', 'sched_migrate_task'):
            running.add(tid)
        if running & a and 'A runs' not in cur:
            cur['A runs'] = ts
        if running & b and 'A sendto' in cur and 'B runs' not in cur:
            cur['B runs'] = ts
        if running & a and 'B sendto' in cur and 'A runs again' not in cur:
            cur['A runs again'] = ts
        if ev == 'sched_waking' and 'A sendto' in cur and 'B runs' not in cur:
            woken = int(re.search(r' pid=(\d+)', rest).group(1))
            if woken in b:
                cur['B waker cpu'] = cpu
                cur['B cpu'] = int(re.search(r'target_cpu=(\d+)', rest).group(1))
        elif ev == 'sched_migrate_task' and 'B waker cpu' in cur and 'B runs' not in cur:
            if int(re.search(r' pid=(\d+)', rest).group(1)) in b:
                cur['B cpu'] = int(re.search(r'dest_cpu=(\d+)', rest).group(1))
        if ev == 'sys_enter':
            if tid in a and nr == SENDTO and 'A sendto' not in cur:
                cur['A sendto'] = ts
            elif tid in b and nr in (WRITE, WRITEV) and 'A sendto' in cur and 'B tun write' not in cur:
                cur['B tun write'] = ts
            elif tid in b and nr == SENDTO and 'B tun write' in cur and 'B sendto' not in cur:
                cur['B sendto'] = ts
            elif tid in a and nr in (WRITE, WRITEV) and 'B sendto' in cur and 'A tun write' not in cur:
                cur['A tun write'] = ts
        elif ev == 'sys_exit':
            if comm == 'ping' and nr == RECVMSG and 'A tun write' in cur and 'ping reply' not in cur:
                cur['ping reply'] = ts
            if tid in b and nr in (WRITE, WRITEV) and 'B tun write' in cur and 'B tun written' not in cur:
                cur['B tun written'] = ts
    order = ['ping sendto', 'A runs', 'A sendto', 'B runs', 'B tun write', 'B tun written',
             'B sendto', 'A runs again', 'A tun write', 'ping reply']
    legs = collections.defaultdict(list)
    placed = collections.defaultdict(list)
    for p in pings:
        if 'ping reply' not in p:
            continue
        prev = 'ping sendto'
        for k in order[1:]:
            if k in p and p[k] >= p[prev]:
                legs[f'{prev} -> {k}'].append(p[k] - p[prev])
                prev = k
        legs['round trip'].append(p['ping reply'] - p['ping sendto'])
        if 'B waker cpu' in p and 'A sendto' in p and 'B runs' in p:
            where = 'waker\'s vCPU' if p['B cpu'] == p['B waker cpu'] else 'other vCPU'
            placed[where].append((p['B runs'] - p['A sendto'], p['ping reply'] - p['ping sendto']))
    print(f'{len(legs["round trip"])} of {len(pings)} pings complete; medians in us:')
    for k, v in legs.items():
        if len(v) >= len(pings) / 10:
            print(f'  {k:34s} n {len(v):4d}  {median(v):6.1f}')
    print("B's thread woken on (A sendto -> B runs, round trip; medians in us):")
    for where, v in sorted(placed.items()):
        print(f'  {where:14s} n {len(v):4d}  {median([x for x, _ in v]):6.1f}  {median([y for _, y in v]):6.1f}')


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[1] == 'syscalls':
        syscalls(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 5 and sys.argv[1] == 'timeline':
        timeline(*sys.argv[2:])
    else:
        sys.exit(__doc__)
