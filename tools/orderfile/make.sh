#!/usr/bin/env bash
# Regenerates cli/symbol-order.txt, the order in which the release link lays
# out pb's functions (lld's --symbol-ordering-file; cli/build.rs passes it):
# the functions the broker runs to start and serve its common requests
# first, in the order of their first call, then those only the CLI's common
# commands run. The kernel maps a binary's code 64 KiB around each page a
# process first runs, so code run together, kept together, is what keeps
# an idle broker's resident code (and a CLI's start-up faults) small.
# BENCHMARKS.md (`memory`, and "Changes") has the figures.
#
# Run from the checkout, on Linux x86_64, with gcc, curl and python3:
#   bash tools/orderfile/make.sh
# It builds the release binary with its link map, runs a workload under a
# first-call tracer (trace.c) and writes the names; `cargo build --release`
# afterwards links with them. Names change when a crate's version, its
# features or the release profile do (cargo hashes them into the names):
# regenerate then. A stale file costs only layout: names it lists that no
# longer exist are skipped, new functions go after the listed ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
broker=
trap '[ -z "$broker" ] || kill "$broker" 2>/dev/null || true; [ -n "${PB_ORDER_KEEP:-}" ] || rm -rf "$work"' EXIT
# The release binary itself: any other settings (symbols kept, say) give
# its functions other names. Its link map (cli/build.rs, PB_LINK_MAP) has
# every function's name and address.
target=$(realpath "${CARGO_TARGET_DIR:-target}")
map=$target/release/pb.map
PB_LINK_MAP="$map" cargo build --release -p pb
bin=$target/release/pb
gcc -O2 -shared -fPIC -o "$work/trace.so" tools/orderfile/trace.c

# Every function in a section of its own (Rust's, and C compiled with
# -ffunction-sections): its address and name. Hand-written assembly's
# labels are left out: some mark data kept among the code.
python3 - "$map" > "$work/symbols" <<'PY'
import sys
section = None
for line in open(sys.argv[1]):
    fields = line.split(maxsplit=4)
    try:
        int(fields[0], 16)
    except (IndexError, ValueError):
        continue
    name = fields[4].strip() if len(fields) == 5 else ""
    if ":(" in name:
        section = name[name.index(":(") + 2 : -1]
    elif section and section.startswith(".text.") and section.endswith("." + name):
        print(fields[0], name)
PY
# The tracer's list: the addresses, in numeric order.
python3 -c 'import sys; print(*(f"{a:x}" for a in sorted({int(l.split()[0], 16) for l in open(sys.argv[1])})), sep="\n")' \
    "$work/symbols" > "$work/funcs"

mkdir "$work/broker" "$work/cli" "$work/home"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
proxy=$(free_port)
# A new PB_HOME: the first start's work (the proxy's local CA) is ordered
# too, since the memory bench measures a first start.
export PB_HOME="$work/home" PB_RANGE=41000-41999 \
    PB_HTTP_ADDR="127.0.0.1:$port,[::1]:$port" PB_PROXY_ADDR="127.0.0.1:$proxy,[::1]:$proxy"
tracer=(LD_PRELOAD="$work/trace.so" PB_TRACE_EXE="$bin" PB_TRACE_FUNCS="$work/funcs")
traced() { # DIR CMD...: CMD with the tracer writing into DIR
    local dir=$1; shift
    env "${tracer[@]}" PB_TRACE_OUT="$work/$dir" "$@"
}
# env execs pb: $! is the broker itself, which the trap can stop.
env "${tracer[@]}" PB_TRACE_OUT="$work/broker" "$bin" daemon 2>"$work/broker.log" &
broker=$!
for _ in $(seq 100); do "$bin" status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" status >/dev/null || { cat "$work/broker.log" >&2; exit 1; }

# The broker's side: what the memory bench and a day's use ask of it.
api="http://127.0.0.1:$port"
for i in $(seq 20); do
    "$bin" claim -q "order:ipc:$i" >/dev/null
    curl -sf -X POST -H 'content-type: application/json' -d "{\"id\":\"order:http:$i\"}" "$api/claim" >/dev/null
    curl -sf "$api/health" >/dev/null
    curl -sf -H 'connection: close' "$api/health" >/dev/null
    curl -sf "$api/services" >/dev/null
done
"$bin" find >/dev/null
"$bin" release 'order:*' >/dev/null
curl -sf "$api/metrics" >/dev/null || true

# The CLI's side: the commands people and scripts run most. (Not `pb
# exec`: a process that blocks SIGTRAP dies at its first breakpoint, and
# its command's does.)
traced cli "$bin" claim -q order:cli >/dev/null
traced cli "$bin" release order:cli >/dev/null
traced cli "$bin" status >/dev/null
traced cli "$bin" find >/dev/null
traced cli "$bin" --help >/dev/null
"$bin" stop >/dev/null
wait "$broker" || true

# Names in first-call order: the broker's first, then the CLI's others.
python3 - "$work" > cli/symbol-order.txt <<'PY'
import collections, glob, os, sys
work = sys.argv[1]
names = collections.defaultdict(list)
for line in open(os.path.join(work, "symbols")):
    off, name = line.split()
    names[int(off, 16)].append(name)
seen = set()
for part in ("broker", "cli"):
    for path in sorted(glob.glob(os.path.join(work, part, "*")), key=os.path.getmtime):
        for line in open(path):
            off = int(line, 16)
            if off in seen:
                continue
            seen.add(off)
            for name in sorted(names.get(off, ())):
                print(name)
PY
echo "cli/symbol-order.txt: $(wc -l < cli/symbol-order.txt) names; now cargo build --release" >&2
