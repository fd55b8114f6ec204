/*
 * headload: a small closed-loop HTTP/1.1 keep-alive load generator for bench/run.sh.
 *
 * It exists for one case wrk 4.1 cannot drive: HEAD. wrk's response parser is never told that
 * a response to HEAD has no body, so it waits for the Content-Length bytes the header announces
 * and completes no request (wg/wrk#198). headload does what wrk does (one thread, N connections,
 * the next request as soon as the previous response is complete, latency from write to the end
 * of the response) for HEAD and GET, and prints wrk's summary lines so the same parser reads it.
 *
 *   headload -c 32 -d 5 -m HEAD -H bench.example.com http://127.0.0.1:18482/path
 *
 * Only http://IPv4:port/path URLs; responses must carry Content-Length (no chunked bodies).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR_MAX 16384
#define MAX_CONNS 4096
#define MAX_SAMPLES (32u << 20)

struct conn {
    int fd;
    uint64_t t0;        /* when the request was written, ns */
    char hdr[HDR_MAX];  /* the response header being read */
    size_t hlen;
    int in_body;        /* header done, skipping `need` body bytes */
    uint64_t need;
    int status;
    int close_after;
};

static struct sockaddr_in addr;
static char request[2048];
static size_t request_len;
static int is_head;
static int ep;
static unsigned long long completed, non2xx, bytes_read;
static unsigned long long err_connect, err_read, err_write;
static uint64_t *samples;
static size_t nsamples, cap_samples;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void record(uint64_t ns) {
    if (nsamples == cap_samples) {
        if (cap_samples >= MAX_SAMPLES) return;
        size_t cap = cap_samples ? cap_samples * 2 : 1 << 16;
        uint64_t *p = realloc(samples, cap * sizeof *p);
        if (!p) return;
        samples = p;
        cap_samples = cap;
    }
    samples[nsamples++] = ns;
}

static int send_request(struct conn *c) {
    c->hlen = 0;
    c->in_body = 0;
    c->need = 0;
    c->t0 = now_ns();
    ssize_t n = write(c->fd, request, request_len);
    if (n != (ssize_t)request_len) { /* a tiny request into an empty socket buffer */
        err_write++;
        return -1;
    }
    return 0;
}

static int open_conn(struct conn *c) {
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { perror("socket"); exit(1); }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
            err_connect++;
            close(fd);
            usleep(1000);
            continue;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) { perror("epoll_ctl"); exit(1); }
        if (send_request(c) == 0) return 0;
        close(fd);
    }
    fprintf(stderr, "headload: cannot connect to the server\n");
    exit(1);
}

static void reopen(struct conn *c) {
    close(c->fd); /* also leaves the epoll set */
    open_conn(c);
}

/* Parses a complete header in c->hdr; returns its length, 0 if incomplete, -1 if malformed. */
static long parse_header(struct conn *c) {
    char *end = memmem(c->hdr, c->hlen, "\r\n\r\n", 4);
    if (!end) return c->hlen >= HDR_MAX ? -1 : 0;
    size_t len = (size_t)(end - c->hdr) + 4;
    if (c->hlen < 12 || memcmp(c->hdr, "HTTP/1.", 7) != 0) return -1;
    c->status = atoi(c->hdr + 9);
    c->need = 0;
    c->close_after = c->hdr[7] == '0'; /* HTTP/1.0 without keep-alive */
    int has_length = 0;
    for (char *line = memchr(c->hdr, '\n', len) + 1; line < end; line = memchr(line, '\n', (size_t)(end - line) + 2) + 1) {
        if (!strncasecmp(line, "content-length:", 15)) {
            c->need = strtoull(line + 15, NULL, 10);
            has_length = 1;
        } else if (!strncasecmp(line, "transfer-encoding:", 18)) {
            return -1; /* chunked bodies are not supported */
        } else if (!strncasecmp(line, "connection:", 11)) {
            const char *v = line + 11;
            while (*v == ' ') v++;
            c->close_after = !strncasecmp(v, "close", 5) ? 1 : !strncasecmp(v, "keep-alive", 10) ? 0 : c->close_after;
        }
    }
    if (is_head || c->status == 204 || c->status == 304) c->need = 0;
    else if (!has_length) return -1;
    return (long)len;
}

static void complete(struct conn *c) {
    record(now_ns() - c->t0);
    completed++;
    if (c->status < 200 || c->status > 399) non2xx++;
    if (c->close_after) reopen(c);
    else if (send_request(c) != 0) reopen(c);
}

/* Reads what is there; returns when the socket would block or the connection was replaced. */
static void on_readable(struct conn *c) {
    static char skip[1 << 16];
    for (;;) {
        ssize_t n;
        if (!c->in_body) {
            n = read(c->fd, c->hdr + c->hlen, HDR_MAX - c->hlen);
        } else {
            n = read(c->fd, skip, sizeof skip);
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) { /* closed or failed mid-response */
            err_read++;
            reopen(c);
            return;
        }
        bytes_read += (unsigned long long)n;
        if (!c->in_body) {
            c->hlen += (size_t)n;
            long hl = parse_header(c);
            if (hl < 0) { err_read++; reopen(c); return; }
            if (hl == 0) continue;
            uint64_t extra = c->hlen - (uint64_t)hl;
            if (extra > c->need) { err_read++; reopen(c); return; } /* bytes after the response */
            c->need -= extra;
            c->in_body = 1;
        } else {
            if ((uint64_t)n > c->need) { err_read++; reopen(c); return; }
            c->need -= (uint64_t)n;
        }
        if (c->in_body && c->need == 0) {
            complete(c);
            return; /* the next response cannot be there yet */
        }
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void print_latency(const char *label, double q) {
    double us = nsamples ? samples[(size_t)(q * (double)(nsamples - 1))] / 1000.0 : 0;
    if (us < 1000) printf("     %s  %8.2fus\n", label, us);
    else printf("     %s  %8.2fms\n", label, us / 1000);
}

static void usage(void) {
    fprintf(stderr, "usage: headload -c CONNECTIONS -d SECONDS [-m METHOD] [-H HOST] http://IP:PORT/PATH\n");
    exit(2);
}

int main(int argc, char **argv) {
    int conns = 32, seconds = 5, opt;
    const char *method = "HEAD", *host = NULL;
    while ((opt = getopt(argc, argv, "c:d:m:H:")) != -1) {
        switch (opt) {
        case 'c': conns = atoi(optarg); break;
        case 'd': seconds = atoi(optarg); break;
        case 'm': method = optarg; break;
        case 'H': host = optarg; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || conns < 1 || conns > MAX_CONNS || seconds < 1 || seconds > 3600) usage();
    const char *url = argv[optind];
    char ip[64];
    unsigned port;
    int path_at = 0;
    if (sscanf(url, "http://%63[0-9.]:%u%n", ip, &port, &path_at) != 2 || url[path_at] != '/') usage();
    const char *path = url + path_at;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1) usage();
    is_head = !strcasecmp(method, "HEAD");
    int rl = snprintf(request, sizeof request, "%s %s HTTP/1.1\r\nHost: %s\r\n\r\n", method, path,
                      host ? host : ip);
    if (rl <= 0 || (size_t)rl >= sizeof request) usage();
    request_len = (size_t)rl;

    ep = epoll_create1(0);
    if (ep < 0) { perror("epoll_create1"); return 1; }
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs) { perror("calloc"); return 1; }
    uint64_t start = now_ns(), end = start + (uint64_t)seconds * 1000000000u;
    for (int i = 0; i < conns; i++) open_conn(&cs[i]);

    struct epoll_event evs[256];
    uint64_t t;
    while ((t = now_ns()) < end) {
        int timeout_ms = (int)((end - t) / 1000000u) + 1;
        int n = epoll_wait(ep, evs, 256, timeout_ms < 50 ? timeout_ms : 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) on_readable(evs[i].data.ptr);
    }
    double elapsed = (double)(now_ns() - start) / 1e9;

    qsort(samples, nsamples, sizeof *samples, cmp_u64);
    printf("Running %ds test @ %s (headload, %s)\n", seconds, url, method);
    printf("  1 threads and %d connections\n", conns);
    printf("  Latency Distribution\n");
    print_latency("50%", 0.50);
    print_latency("75%", 0.75);
    print_latency("90%", 0.90);
    print_latency("99%", 0.99);
    printf("  %llu requests in %.2fs, %.2fMB read\n", completed, elapsed, bytes_read / 1048576.0);
    if (non2xx) printf("  Non-2xx or 3xx responses: %llu\n", non2xx);
    if (err_connect || err_read || err_write)
        printf("  Socket errors: connect %llu, read %llu, write %llu, timeout 0\n", err_connect, err_read, err_write);
    printf("Requests/sec: %10.2f\n", completed / elapsed);
    return 0;
}
