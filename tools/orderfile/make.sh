#!/usr/bin/env bash
# Regenerates cli/symbol-order.txt, the order in which the release link lays
# out pb's functions (lld's --symbol-ordering-file; cli/build.rs passes it):
# the functions the broker runs to start and serve its common requests
# first, in the order of their first call, then those only the CLI's common
# commands run. The functions of the C libraries linked in (glibc's, since
# the link is static: .cargo/config.toml) are ordered too. The kernel maps a binary's code 64 KiB around each page a
# process first runs, so code run together, kept together, is what keeps
# an idle broker's resident code (and a CLI's start-up faults) small.
# BENCHMARKS.md (`memory`, and "Changes") has the figures.
#
# Run from the checkout, on Linux x86_64, with gcc, curl and python3:
#   bash tools/orderfile/make.sh
# It builds the release binary with its link map, runs a workload under a
# first-call tracer (ptrace.c) and writes the names; `cargo build --release`
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
# Builds name the host's target (.cargo/config.toml): target/<triple>/.
target=$(realpath "${CARGO_TARGET_DIR:-target}")/$(rustc -vV | sed -n 's/^host: //p')
map=$target/release/pb.map
PB_LINK_MAP="$map" cargo build --release -p pb
bin=$target/release/pb
gcc -O2 -o "$work/pbtrace" tools/orderfile/ptrace.c

# Every function in a section of its own (Rust's, and C compiled with
# -ffunction-sections): its address and name; and every function of the
# static libraries' objects (glibc's: a section per object), whose sizes
# the map gives. The link orders sections, so naming any one function of
# an object moves all of it. Other labels of hand-written assembly are
# left out: some mark data kept among the code.
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
        archive = ".a(" in name
    elif section and section.startswith(".text.") and section.endswith("." + name):
        print(fields[0], name)
    elif section and archive and section.startswith(".text") and int(fields[2], 16) > 0:
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
traced() { # DIR CMD...: CMD under the tracer, which writes into DIR
    local dir=$1; shift
    "$work/pbtrace" "$work/$dir" "$work/funcs" "$@"
}
# $! is the tracer, which ends with the broker, and which the trap can
# stop (PTRACE_O_EXITKILL takes the broker with it).
traced broker "$bin" daemon 2>"$work/broker.log" &
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
# exec`, whose time goes to the command it runs.)
# A lease of `pb claim -q` lasts as long as the claimant's parent, here
# the tracer: the second claim's is gone when it ends (and the broker's
# reclaim is traced with it).
traced cli "$bin" claim -q order:cli:gone >/dev/null
"$bin" claim -q order:cli >/dev/null
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
