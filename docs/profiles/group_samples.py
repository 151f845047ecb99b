#!/usr/bin/env python3
"""Groups profile samples into the categories of docs/benchmarks.md, "Where the
CPU goes (profiles)".

  perf FILE RULES THREADS [--window-threads T --from PATTERN --skip S --duration D] [--kernel-split]
      FILE: `perf script -F comm,tid,time,period,ip,sym,dso` output (dwarf call
      graphs). THREADS: a regex on the thread name. A sample goes to the rule of
      its innermost frame that matches one (low-level I/O, allocation and
      unresolved frames are skipped, so they count for their caller); the
      `tasks` rules instead take the first rule matching any frame. With
      --from, only samples from S seconds after the first sample (of
      --window-threads, default THREADS) with a frame matching PATTERN, for D
      seconds. --kernel-split (gateway rules): where the kernel time of the
      flusher's writes goes.
  callgrind FILE RULES CALLS
      FILE: a callgrind dump. Each function's own instructions go to its rule;
      allocator, memcpy and std plumbing are handed to callers in proportion
      to their call costs. CALLS: calls served while it was collecting.
"""
import collections
import re
import sys

RULES={
 'service':[
  ('event path to watchers (events, broadcast, watch stream)', r'progress_service::events|broadcast|watch_progress|WatchStream|watch_changes'),
  ('batch writer (stream read/ack, sqlx/Postgres)', r'batch_writer|sqlx|hybrid::pg::'),
  ('Redis client (redis crate: commands, RESP, multiplexed conn)', r'\bredis::|combine::|ConnectionManager'),
  ('script args / record encoding (codec, fmt, serde)', r'hybrid::codec|serde|core::fmt|alloc::fmt|itoa|ryu|chrono'),
  ('gRPC/HTTP2 (tonic, h2, hyper, prost, tower)', r'tonic|\bh2::|hyper|prost|tower|\bhttp::'),
  ('service logic (store, domain, change log)', r'progress_service::'),
  ('tokio runtime/scheduling (incl. I/O driver)', r'tokio::|mio::|parking_lot'),
 ],
 'gateway':[
  ('gRPC watch stream receive (tonic, h2, hyper, prost)', r'tonic|\bh2::|hyper|prost|tower|\bhttp::|watch::run|watch::follow'),
  ('event serialization', r'serde|json|Record::|to_line|itoa|ryu|core::fmt|chrono|framing'),
  ('queueing/locking (Outbound::push/enqueue, first_delivery, flusher schedule + wake)', r'Outbound::push|Outbound::enqueue|first_delivery|Flushers::schedule|Notify|notify'),
  ('flusher loop (flush_loop, Outbound::flush, batches; user space)', r'flush_loop|Outbound::flush|after_write|write_now|outbound::drain|Batch'),
  ('deliver loop (subscriber walk)', r'Fanout::deliver|registry'),
  ('tokio runtime/scheduling', r'tokio::|mio::|parking_lot'),
 ],
 'tasks':[
  ('UpdateProgress handler (store update: script call, codec)', r'ProgressService>::update_progress'),
  ('gRPC request stream (H2Stream: decode, encode, tower/tonic)', r'H2Stream'),
  ('event relay to watchers (XREAD, decode, broadcast)', r'relay::run'),
  ('batch writer (XREADGROUP/XACK, sqlx to Postgres)', r'batch_writer|BatchWriter'),
  ('Redis connection task (socket I/O, RESP parse)', r'PipelineSink|multiplexed_connection'),
  ('HTTP/2 connection (frames, flow control, socket I/O)', r'serve_connection|h2::server::Connection|h2::proto::connection|hyper::proto::h2::server::Server'),
  ('tokio scheduler, park, I/O driver', r'tokio::runtime|parking_lot|mio::'),
 ],
 'redis':[
  ('networking (read/parse requests, replies, write)', r'readQueryFromClient|processInputBuffer|processMultibulk|addReply|writeToClient|handleClientsWithPendingWrites|writev|connSocket|_addReply'),
  ('commands run (HSET, XADD, ... incl. those the script calls)', r'^(?!eval|fcall|luaRedis)\w+Command$|lookupKey|^dict|^lp[A-Z]|^rax|^stream|^hash|^xadd|^sds|^createEmbedded|^siphash|hdr_record'),
  ('Lua (VM, argument/reply conversion, GC)', r'lua|Lua|eval|script|Script'),
  ('event loop, timers', r'aeProcessEvents|aeMain|epoll|beforeSleep|serverCron|gettimeofday|clock_gettime'),
 ],
}

# Low-level I/O and allocation: attributed to whoever called them.
SKIP=re.compile(r'tokio::runtime::io::registration|tokio::net|tokio::io|tokio_util::codec|mio::|std::io|std::sys|std::net|^__|^_int|malloc|free|memcpy|memmove|^core::ptr|^drop_in_place|\[unknown\]|^(send|recv|write|read|writev|sendmsg|recvmsg|epoll_wait|syscall)$')
TRANSPARENT=re.compile(r'core::iter|core::hash|std::collections|core::future|alloc::sync|tokio_util::util|core::option|core::result|malloc|free|memcpy|memmove|memset|memcmp|__rust_|__rdl_|alloc::alloc|alloc::raw_vec|RawVec|core::ptr|drop_in_place|std::io|std::sys|tokio::net|tokio::io|tokio::runtime::io::registration|mio::|^_dl|realloc|cfree|tcache|unlink_chunk|bytes::|<alloc::|alloc::vec|alloc::string|core::slice|core::str|hashbrown|^0x|syscall|^__|^_int|\[|writev|sendmsg|recvfrom|epoll_wait|^read$|^write$|clock_gettime|futex')


def samples(path):
    head = None
    frames = []
    for line in open(path, errors='replace'):
        if not line.strip():
            if head:
                yield head, frames
            head = None
            frames = []
            continue
        if not line[0].isspace():
            parts = line.split()
            ti = [i for i, p in enumerate(parts) if p.endswith(':')]
            t = float(parts[ti[0]][:-1]) if ti else 0.0
            head = (parts[0], t)
        else:
            s = line.strip().split(None, 1)
            if len(s) < 2:
                continue
            m = re.match(r'(.*) \(([^()]*)\)$', s[1])
            frames.append((m.group(1), m.group(2)) if m else (s[1], ''))
    if head:
        yield head, frames


def innermost(frames, rules):
    for sym, dso in frames:
        if 'kernel' in dso or SKIP.search(sym):
            continue
        hit = next((name for name, r in rules if r.search(sym)), None)
        if hit:
            return hit
    return 'other'


def kernel_part(frames):
    ks = ' '.join(s for s, d in frames if 'kernel' in d)
    if re.search(r'sock_def_readable|ep_poll_callback|try_to_wake_up|__wake_up', ks):
        return 'receiver wake-up (sock_def_readable, epoll callback)'
    if re.search(r'tcp_v4_rcv|ip_rcv|net_rx_action|__netif_receive|process_backlog|tcp_rcv|ip_local_deliver', ks):
        return 'loopback receive side (softirq IP/TCP rx, in the sender context)'
    if re.search(r'copy_from_iter|_copy_from|skb_copy|copy_user', ks):
        return 'copy into socket buffers'
    if re.search(r'tcp_sendmsg|tcp_write_xmit|tcp_transmit|ip_output|ip_finish|ip_queue_xmit|dev_queue_xmit|loopback_xmit|tcp_push', ks):
        return 'TCP send path (segment, transmit)'
    return 'syscall entry/exit, fd, security, other'


def perf(argv):
    path, ruleset, threads = argv[0], argv[1], argv[2]
    opts = {'--window-threads': None, '--from': None, '--skip': '0', '--duration': None}
    split = False
    rest = argv[3:]
    while rest:
        if rest[0] == '--kernel-split':
            split = True
            rest = rest[1:]
        else:
            opts[rest[0]] = rest[1]
            rest = rest[2:]
    rules = [(n, re.compile(r)) for n, r in RULES[ruleset]]
    lo, hi = -1.0, float('inf')
    if opts['--from']:
        pat = re.compile(opts['--from'])
        wt = opts['--window-threads'] or threads
        t0 = next(t for (c, t), fr in samples(path)
                  if re.fullmatch(wt, c) and any(pat.search(s) for s, _ in fr))
        lo = t0 + float(opts['--skip'])
        if opts['--duration']:
            hi = lo + float(opts['--duration'])
    total = collections.Counter()
    kernel = collections.Counter()
    parts = collections.Counter()
    n = 0
    for (c, t), fr in samples(path):
        if not re.fullmatch(threads, c) or not lo <= t <= hi:
            continue
        n += 1
        if ruleset == 'tasks':
            cat = next((name for name, r in rules if any(r.search(s) for s, _ in fr)),
                       'other (stack truncated)')
        else:
            cat = innermost(fr, rules)
        in_kernel = bool(fr) and 'kernel' in fr[0][1]
        if in_kernel and ruleset == 'gateway' and cat.startswith('flusher'):
            cat = 'write syscall + kernel TCP/loopback (incl. receiver wake-up)'
            parts[kernel_part(fr)] += 1
        total[cat] += 1
        kernel[cat] += in_kernel
    print(f'samples: {n}')
    print('| category | % of CPU | of which in the kernel |')
    print('|---|---|---|')
    for cat, v in total.most_common():
        print(f'| {cat} | {100 * v / n:.1f} | {100 * kernel[cat] / n:.1f} |')
    print(f'| all kernel | {100 * sum(kernel.values()) / n:.1f} | |')
    if split:
        print('| write path in the kernel: | % of CPU |')
        print('|---|---|')
        for k, v in parts.most_common():
            print(f'| {k} | {100 * v / n:.1f} |')


def callgrind(argv):
    path, ruleset, calls = argv[0], argv[1], int(argv[2])
    rules = [(n, re.compile(r)) for n, r in RULES[ruleset]]
    names = {}
    own = collections.Counter()
    callers = collections.defaultdict(collections.Counter)
    cur = callee = None
    pending = False

    def name(s):
        m = re.match(r'\((\d+)\)(?: (.*))?', s)
        if not m:
            return s
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    for line in open(path, errors='replace'):
        line = line.rstrip('\n')
        if line.startswith('fn='):
            cur = name(line[3:])
        elif line.startswith('cfn='):
            callee = name(line[4:])
        elif line.startswith('calls='):
            pending = True
        elif line and (line[0].isdigit() or line[0] in '+-*'):
            parts = line.split()
            if len(parts) < 2:
                continue
            if pending:
                callers[callee][cur] += int(parts[-1])
                pending = False
            else:
                own[cur] += int(parts[-1])
    total = sum(own.values())
    cost = collections.Counter(own)

    def rule(f):
        if TRANSPARENT.search(f):
            return None
        return next((n for n, r in rules if r.search(f)), 'other')

    for _ in range(12):
        moved = False
        for f in list(cost):
            if cost[f] > 0 and rule(f) is None and callers.get(f):
                weights = callers[f]
                s = sum(weights.values())
                if s <= 0:
                    continue
                for g, w in weights.items():
                    if g != f:
                        cost[g] += cost[f] * w / s
                cost[f] = 0
                moved = True
        if not moved:
            break
    cat = collections.Counter()
    for f, c in cost.items():
        cat[rule(f) or 'allocator/memcpy/std (callers unknown)'] += c
    print(f'instructions: {total:,}; per call: {total / calls:,.0f} ({calls} calls)')
    print('| category | % of instructions | instructions per call |')
    print('|---|---|---|')
    for k, v in cat.most_common():
        print(f'| {k} | {100 * v / total:.1f} | {v / calls:,.0f} |')


if __name__ == '__main__':
    {'perf': perf, 'callgrind': callgrind}[sys.argv[1]](sys.argv[2:])
