/* The first-call tracer behind symbol-order.txt (see make.sh): preloaded
 * into the release pb, it puts a breakpoint (int3) on the entry of every
 * function whose address the list in PB_TRACE_FUNCS gives (from the link's
 * map), and on each function's
 * first call restores the byte and appends the function's offset to
 * PB_TRACE_OUT/<pid>. Only for generating the order file on a developer's
 * machine; nothing of it is in pb. Processes other than PB_TRACE_EXE are
 * left alone. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

static uintptr_t base;
static uintptr_t *entries;     /* sorted function entry addresses */
static unsigned char *original; /* each entry's first byte */
static volatile char *seen;
static size_t count;
static int out = -1;

static long find(uintptr_t a) {
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entries[mid] == a) return (long)mid;
        if (entries[mid] < a) lo = mid + 1; else hi = mid;
    }
    return -1;
}

static void record(uintptr_t offset) {
    char buf[24];
    int n = 0;
    char tmp[20];
    do { tmp[n++] = "0123456789abcdef"[offset & 15]; offset >>= 4; } while (offset);
    for (int i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    buf[n] = '\n';
    (void)!write(out, buf, n + 1);
}

static void on_trap(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)info;
    ucontext_t *uc = ctx;
    uintptr_t a = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP] - 1;
    long i = find(a);
    if (i < 0) _exit(86); /* an int3 that is not ours */
    *(volatile unsigned char *)a = original[i];
    if (!__atomic_exchange_n(&seen[i], 1, __ATOMIC_SEQ_CST)) record(a - base);
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)a;
}

static int main_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    int *writable = data;
    base = info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        if (p->p_type == PT_LOAD && (p->p_flags & PF_X)) {
            uintptr_t start = (base + p->p_vaddr) & ~(uintptr_t)4095;
            uintptr_t end = base + p->p_vaddr + p->p_memsz;
            if (mprotect((void *)start, end - start, PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
                *writable = 0;
        }
    }
    return 1; /* the first object is the executable */
}

__attribute__((constructor)) static void start(void) {
    const char *exe = getenv("PB_TRACE_EXE"), *funcs = getenv("PB_TRACE_FUNCS"),
               *dir = getenv("PB_TRACE_OUT");
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (!exe || !funcs || !dir || n <= 0) return;
    self[n] = 0;
    if (strcmp(self, exe) != 0) return;
    FILE *f = fopen(funcs, "r");
    if (!f) return;
    size_t cap = 1 << 16;
    entries = malloc(cap * sizeof *entries);
    unsigned long long v;
    while (fscanf(f, "%llx", &v) == 1) {
        if (count == cap) entries = realloc(entries, (cap *= 2) * sizeof *entries);
        entries[count++] = (uintptr_t)v;
    }
    fclose(f);
    char path[4200];
    snprintf(path, sizeof path, "%s/%d", dir, getpid());
    out = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out < 0) return;
    int writable = 1;
    dl_iterate_phdr(main_object, &writable);
    if (!writable) {
        fprintf(stderr, "pbtrace: the code cannot be made writable; not tracing\n");
        return;
    }
    original = malloc(count);
    seen = calloc(count, 1);
    for (size_t i = 0; i < count; i++) {
        entries[i] += base; /* the list is sorted, so these stay sorted */
        original[i] = *(unsigned char *)entries[i];
    }
    struct sigaction sa = {0};
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGTRAP, &sa, NULL);
    for (size_t i = 0; i < count; i++) *(volatile unsigned char *)entries[i] = 0xCC;
}
