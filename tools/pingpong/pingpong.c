/* The machine's floor for a Unix round trip, against which pb's `status`
 * is read (BENCHMARKS.md, `claim`): two processes on a socketpair, 16-byte
 * messages, blocking reads (or, with any argument, the server waiting in
 * epoll_wait first, as the broker's runtime does). Prints p50 and p99 of
 * 20 000 round trips after 2 000 warm-up ones.
 *
 *   cc -O2 -o /tmp/pingpong tools/pingpong/pingpong.c
 *   /tmp/pingpong; /tmp/pingpong epoll
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define N 20000
#define WARM 2000

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int sv[2];
    int with_epoll = argc > 1;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    pid_t server = fork();
    if (server == 0) {
        char b[64];
        int ep = epoll_create1(0);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = sv[1]};
        close(sv[0]);
        epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &e);
        for (;;) {
            struct epoll_event out;
            if (with_epoll && epoll_wait(ep, &out, 1, -1) < 0)
                _exit(1);
            ssize_t n = read(sv[1], b, sizeof b);
            if (n <= 0 || write(sv[1], b, n) != n)
                _exit(0);
        }
    }
    close(sv[1]);
    static double t[N];
    char b[64] = "ping";
    for (int i = 0; i < N + WARM; i++) {
        double s = now_us();
        if (write(sv[0], b, 16) != 16 || read(sv[0], b, sizeof b) <= 0) {
            perror("round trip");
            return 1;
        }
        if (i >= WARM)
            t[i - WARM] = now_us() - s;
    }
    close(sv[0]);
    qsort(t, N, sizeof t[0], by_value);
    printf("%s: p50 %.1f us, p99 %.1f us\n", with_epoll ? "epoll" : "blocking",
           t[N / 2], t[N * 99 / 100]);
    return 0;
}
