/* The first-call tracer behind symbol-order.txt (see make.sh), for a
 * statically linked pb, which no library can be preloaded into:
 *
 *   pbtrace OUTDIR FUNCS PROGRAM [ARGS...]
 *
 * runs PROGRAM under ptrace(2), puts a breakpoint (int3) on the entry of
 * every function whose offset in the executable FUNCS lists (from the
 * link's map), and on each function's first call restores the byte and
 * appends the function's offset to OUTDIR/<pid>. Every thread of PROGRAM
 * is traced (they share the breakpoints); a child it starts is let go at
 * its exec, when its breakpoints are gone with its copy of pb. Only for
 * generating the order file on a developer's machine; nothing of it is in
 * pb. Exits with PROGRAM's status. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

static uintptr_t *entries; /* sorted function entry offsets */
static unsigned char *original;
static char *seen;
static size_t count;

static long find(uintptr_t a) {
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entries[mid] == a) return (long)mid;
        if (entries[mid] < a) lo = mid + 1; else hi = mid;
    }
    return -1;
}

static void die(const char *what) {
    perror(what);
    exit(70);
}

/* The executable's load address: its first mapping, at file offset 0. */
static uintptr_t load_base(pid_t pid, const char *exe) {
    char path[64], line[4600], file[4096];
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *f = fopen(path, "r");
    if (!f) die("maps");
    unsigned long lo, off;
    while (fgets(line, sizeof line, f)) {
        file[0] = 0;
        if (sscanf(line, "%lx-%*x %*s %lx %*s %*s %4095s", &lo, &off, file) >= 2 && off == 0 &&
            strcmp(file, exe) == 0) {
            fclose(f);
            return lo;
        }
    }
    fprintf(stderr, "pbtrace: %s is not mapped in %d\n", exe, pid);
    exit(70);
}

static void poke(int mem, uintptr_t at, unsigned char byte) {
    if (pwrite(mem, &byte, 1, (off_t)at) != 1) die("writing the tracee's code");
}

/* Puts back a function's first byte in the memory of the thread that hit
 * its breakpoint: the main process's, or a forked child's own copy (which
 * may still hold breakpoints the main process has had put back). */
static void restore(pid_t tid, uintptr_t at, unsigned char byte) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", tid);
    int mem = open(path, O_RDWR | O_CLOEXEC);
    if (mem < 0) die("the tracee's memory");
    unsigned char now;
    if (pread(mem, &now, 1, (off_t)at) != 1) die("reading code");
    if (now == 0xCC) poke(mem, at, byte);
    close(mem);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: pbtrace OUTDIR FUNCS PROGRAM [ARGS...]\n");
        return 64;
    }
    FILE *f = fopen(argv[2], "r");
    if (!f) die(argv[2]);
    size_t cap = 1 << 16;
    entries = malloc(cap * sizeof *entries);
    unsigned long long v;
    while (fscanf(f, "%llx", &v) == 1) {
        if (count == cap) entries = realloc(entries, (cap *= 2) * sizeof *entries);
        entries[count++] = (uintptr_t)v;
    }
    fclose(f);
    char exe[4096];
    if (!realpath(argv[3], exe)) die(argv[3]);

    pid_t main_pid = fork();
    if (main_pid < 0) die("fork");
    if (main_pid == 0) {
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0) die("PTRACE_TRACEME");
        execv(exe, argv + 3);
        die("exec");
    }
    int st;
    if (waitpid(main_pid, &st, 0) != main_pid || !WIFSTOPPED(st)) die("the exec stop");
    ptrace(PTRACE_SETOPTIONS, main_pid, 0,
           PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACEEXEC |
               PTRACE_O_EXITKILL);
    uintptr_t base = load_base(main_pid, exe);
    char path[4200];
    snprintf(path, sizeof path, "/proc/%d/mem", main_pid);
    int mem = open(path, O_RDWR | O_CLOEXEC);
    if (mem < 0) die("the tracee's memory");
    snprintf(path, sizeof path, "%s/%d", argv[1], main_pid);
    FILE *out = fopen(path, "a");
    if (!out) die(path);
    original = malloc(count);
    seen = calloc(count, 1);
    for (size_t i = 0; i < count; i++) {
        if (pread(mem, &original[i], 1, (off_t)(base + entries[i])) != 1) die("reading code");
        poke(mem, base + entries[i], 0xCC);
    }
    ptrace(PTRACE_CONT, main_pid, 0, 0);

    int status = 0;
    for (;;) {
        pid_t tid = waitpid(-1, &st, __WALL);
        if (tid < 0) {
            if (errno == EINTR) continue;
            break; /* no tracee left */
        }
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            if (tid == main_pid) status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            continue;
        }
        if (!WIFSTOPPED(st)) continue;
        int sig = WSTOPSIG(st), event = st >> 16, deliver = 0;
        if (event == PTRACE_EVENT_EXEC) {
            /* A child's exec: its image is no longer pb's. */
            if (tid != main_pid) {
                ptrace(PTRACE_DETACH, tid, 0, 0);
                continue;
            }
        } else if (event == 0 && sig == SIGTRAP) {
            struct user_regs_struct regs;
            ptrace(PTRACE_GETREGS, tid, 0, &regs);
            uintptr_t a = regs.rip - 1;
            long i = a >= base ? find(a - base) : -1;
            if (i >= 0) {
                restore(tid, a, original[i]);
                if (!seen[i]) {
                    seen[i] = 1;
                    fprintf(out, "%lx\n", (unsigned long)(a - base));
                }
                regs.rip = a;
                ptrace(PTRACE_SETREGS, tid, 0, &regs);
            } else {
                deliver = sig;
            }
        } else if (event == 0 && sig != SIGSTOP) {
            deliver = sig;
        }
        ptrace(PTRACE_CONT, tid, 0, (void *)(long)deliver);
    }
    fclose(out);
    return status;
}
