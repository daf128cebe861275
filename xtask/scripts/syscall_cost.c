/* What the accept loop's system calls cost on this machine, in ns per call: accept4 on a
 * listener whose queue is empty (what tokio's edge-triggered accept loop ends every burst
 * with), getsockopt(TCP_INFO) on the same listener (what proxy/accept.rs asks instead),
 * getsockname on a connected socket (one per accepted connection), and getppid as the
 * floor of any system call. Two rounds of 200 000 calls each.
 *
 *   gcc -O2 -o /tmp/syscall-cost xtask/scripts/syscall_cost.c && taskset -c 1 /tmp/syscall-cost
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(void) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 16) ||
        getsockname(listener, (struct sockaddr *)&address, &length)) {
        perror("listener");
        return 1;
    }
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, (struct sockaddr *)&address, sizeof address)) {
        perror("connect");
        return 1;
    }
    int accepted = -1;
    while (accepted < 0) accepted = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
    const int n = 200000;
    for (int round = 0; round < 2; round++) {
        double t0 = now_ns();
        for (int i = 0; i < n; i++) accept4(listener, NULL, NULL, SOCK_NONBLOCK);
        double t1 = now_ns();
        for (int i = 0; i < n; i++) {
            struct tcp_info info;
            socklen_t len = sizeof info;
            getsockopt(listener, IPPROTO_TCP, TCP_INFO, &info, &len);
        }
        double t2 = now_ns();
        for (int i = 0; i < n; i++) {
            struct sockaddr_in local;
            socklen_t len = sizeof local;
            getsockname(accepted, (struct sockaddr *)&local, &len);
        }
        double t3 = now_ns();
        for (int i = 0; i < n; i++) getppid();
        double t4 = now_ns();
        printf("accept4 (EAGAIN) %.0f ns, getsockopt(TCP_INFO) %.0f ns, getsockname %.0f ns, "
               "getppid %.0f ns\n",
               (t1 - t0) / n, (t2 - t1) / n, (t3 - t2) / n, (t4 - t3) / n);
    }
    return 0;
}
