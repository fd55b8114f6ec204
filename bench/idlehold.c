/*
 * idlehold: opens N HTTP/1.1 keep-alive connections to a server for bench/run.sh's scale case,
 * makes one request on each (so each is a real client connection, past the server's first
 * read), then holds them all idle until it gets SIGTERM or SIGINT.
 *
 *   idlehold -c 10000 -H bench.example.com http://127.0.0.1:18482/path
 *
 * It prints "held N" once every connection has had its answer, and "lost N" at the end: how
 * many the server had closed meanwhile (a server that drops idle connections early shows it).
 * Only http://IPv4:port/path URLs. The file descriptor limit must allow N (ulimit -n).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what) {
    fprintf(stderr, "idlehold: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    int n = 1000, opt;
    const char *host = "localhost";
    while ((opt = getopt(argc, argv, "c:H:")) != -1) {
        if (opt == 'c') n = atoi(optarg);
        else if (opt == 'H') host = optarg;
        else { fprintf(stderr, "usage: idlehold -c N -H host http://ip:port/path\n"); return 2; }
    }
    if (optind >= argc || n <= 0) { fprintf(stderr, "usage: idlehold -c N -H host http://ip:port/path\n"); return 2; }
    char ip[64] = {0}, path[1024] = "/";
    int port = 0;
    if (sscanf(argv[optind], "http://%63[0-9.]:%d%1023s", ip, &port, path) < 2) {
        fprintf(stderr, "idlehold: only http://IPv4:port/path URLs\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1) { fprintf(stderr, "idlehold: bad address %s\n", ip); return 2; }
    char req[2048];
    int rlen = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    struct pollfd *fds = calloc((size_t)n, sizeof *fds);
    if (!fds) die("calloc");
    char buf[65536];
    /* One at a time: connect, ask, read the first bytes of the answer. A thousand take a few
     * milliseconds on loopback; it is the held state that is measured, not the opening. */
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket (raise ulimit -n?)");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        if (write(fd, req, (size_t)rlen) != rlen) die("write");
        if (read(fd, buf, sizeof buf) <= 0) die("read");
        fds[i].fd = fd;
        fds[i].events = POLLIN;
    }
    printf("held %d\n", n);
    fflush(stdout);
    /* Idle: read (and drop) whatever else arrives; a read of 0 means the server closed it. */
    int lost = 0;
    while (!stop) {
        int ready = poll(fds, (nfds_t)n, 200);
        if (ready < 0 && errno != EINTR) die("poll");
        for (int i = 0; ready > 0 && i < n; i++) {
            if (fds[i].fd < 0 || !fds[i].revents) continue;
            ready--;
            if (read(fds[i].fd, buf, sizeof buf) <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                lost++;
            }
        }
    }
    printf("lost %d\n", lost);
    return 0;
}
