/*
 * coldrecv - the kernel's cost of receiving one queued UDP datagram after
 * an idle gap, by the system call and the memory layout used for it.
 *
 *   coldrecv GAP_US    600 rounds over loopback; each round, per receiver:
 *                      one 128-byte datagram is sent to it, GAP_US asleep,
 *                      then its receive call is timed
 *
 * The receivers, each its own connected IPv4 socket (with UDP_GRO unless
 * said otherwise), alternating within a round so that the host's drift
 * falls on all alike:
 *   recvfrom (stack buffer)   no address, no GRO (boringtun-cli's way)
 *   recvmmsg, spread headers  8 headers, their iovecs, addresses and
 *                             control buffers each in an allocation of its
 *                             own, 64 KiB data buffers (segmesh-node's
 *                             receive batch)
 *   recvmmsg, packed headers  the same 8 in one page that also holds the
 *                             start of the first data buffer
 *   recvmsg, packed header    the first of those headers alone
 *   recvmmsg, spread, no GRO  the spread batch on a socket without GRO
 *   recvfrom, with address    into a stack buffer, the sender's address
 *                             too, no GRO (the call of segmesh-node's
 *                             lone read, which reads into its batch buffer)
 *   recvmsg, spread header    the first spread header alone
 * Why: the kernel reads the headers and writes the address, the control
 * data and the datagram into user memory; after an idle gap each distinct
 * line (and page) it touches is a cache (and TLB) miss, counted as system
 * time of the call.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>

#include "lab.h"

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

enum { ROUNDS = 600, KINDS = 7, BATCH = 8, BUF = 65536 };

/* The headers of one batch and where they point. */
struct batch {
    struct mmsghdr *hdrs;
    struct iovec *iovs;
    struct sockaddr_storage *names;
    char (*cmsgs)[32];
};

static void point(struct batch *b, char **bufs) {
    for (int i = 0; i < BATCH; i++) {
        b->iovs[i] = (struct iovec){bufs[i], BUF};
        memset(&b->hdrs[i], 0, sizeof b->hdrs[i]);
        b->hdrs[i].msg_hdr.msg_name = &b->names[i];
        b->hdrs[i].msg_hdr.msg_iov = &b->iovs[i];
        b->hdrs[i].msg_hdr.msg_iovlen = 1;
        b->hdrs[i].msg_hdr.msg_control = b->cmsgs[i];
    }
}

static void reset(struct batch *b) {
    for (int i = 0; i < BATCH; i++) {
        b->hdrs[i].msg_hdr.msg_namelen = sizeof b->names[i];
        b->hdrs[i].msg_hdr.msg_controllen = sizeof b->cmsgs[i];
    }
}

/* Headers each in their own allocation, 64 KiB data buffers. */
static void spread(struct batch *b) {
    static char *bufs[BATCH];
    b->hdrs = calloc(BATCH, sizeof *b->hdrs);
    b->iovs = calloc(BATCH, sizeof *b->iovs);
    b->names = calloc(BATCH, sizeof *b->names);
    b->cmsgs = calloc(BATCH, sizeof *b->cmsgs);
    for (int i = 0; i < BATCH; i++) bufs[i] = calloc(1, BUF);
    point(b, bufs);
}

/* Headers packed at the start of a page; the first data buffer follows
 * them on the same page. */
static void packed(struct batch *b) {
    static char *bufs[BATCH];
    char *p = mmap(NULL, BATCH * BUF + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    b->hdrs = (void *)p;
    b->iovs = (void *)(p + BATCH * sizeof *b->hdrs);
    b->names = (void *)((char *)b->iovs + BATCH * sizeof *b->iovs);
    b->cmsgs = (void *)((char *)b->names + BATCH * sizeof *b->names);
    char *data = (char *)b->cmsgs + BATCH * sizeof *b->cmsgs;
    for (int i = 0; i < BATCH; i++) bufs[i] = data + (size_t)i * BUF;
    point(b, bufs);
}

static int udp_socket(int gro, struct sockaddr_in *bound) {
    int s = socket(AF_INET, SOCK_DGRAM, 0), on = 1;
    socklen_t len = sizeof *bound;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a)) die("socket");
    if (gro && setsockopt(s, SOL_UDP, UDP_GRO, &on, sizeof on)) die("UDP_GRO");
    if (getsockname(s, (struct sockaddr *)bound, &len)) die("getsockname");
    return s;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: coldrecv GAP_US\n");
        return 2;
    }
    long gap_us = atol(argv[1]);
    const char *name[KINDS] = {"recvfrom (stack buffer)", "recvmmsg, spread headers", "recvmmsg, packed headers",
                               "recvmsg, packed header", "recvmmsg, spread, no GRO",
                               "recvfrom, with address", "recvmsg, spread header"};
    int rx[KINDS], tx[KINDS];
    for (int k = 0; k < KINDS; k++) {
        struct sockaddr_in ra, ta;
        rx[k] = udp_socket(k != 4 && k != 0 && k != 5, &ra);
        tx[k] = udp_socket(0, &ta);
        if (connect(rx[k], (struct sockaddr *)&ta, sizeof ta) || connect(tx[k], (struct sockaddr *)&ra, sizeof ra))
            die("connect");
    }
    struct batch sp, pk, sp2;
    spread(&sp);
    packed(&pk);
    spread(&sp2);
    static uint64_t t[KINDS][ROUNDS];
    char payload[128] = {4};
    struct timespec gap = {gap_us / 1000000, (gap_us % 1000000) * 1000};
    for (int r = -10; r < ROUNDS; r++) {
        for (int k = 0; k < KINDS; k++) {
            char stack[2048];
            if (send(tx[k], payload, sizeof payload, 0) != sizeof payload) die("send");
            struct batch *b = k == 1 || k == 6 ? &sp : k == 4 ? &sp2 : &pk;
            struct sockaddr_storage from;
            socklen_t fromlen = sizeof from;
            reset(b);
            nanosleep(&gap, NULL);
            uint64_t t0 = now_ns();
            ssize_t n = k == 0   ? recvfrom(rx[k], stack, sizeof stack, MSG_DONTWAIT, NULL, NULL)
                        : k == 5 ? recvfrom(rx[k], stack, sizeof stack, MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen)
                        : k == 3 || k == 6 ? recvmsg(rx[k], &b->hdrs[0].msg_hdr, MSG_DONTWAIT)
                                 : recvmmsg(rx[k], b->hdrs, BATCH, MSG_DONTWAIT, NULL);
            uint64_t dt = now_ns() - t0;
            if (n != (k == 0 || k == 3 || k == 5 || k == 6 ? (ssize_t)sizeof payload : 1)) die("receive");
            if (r >= 0) t[k][r] = dt;
        }
    }
    for (int k = 0; k < KINDS; k++) {
        qsort(t[k], ROUNDS, sizeof t[k][0], by_value);
        printf("%-26s p50 %6.2f us  p90 %6.2f us\n", name[k], t[k][ROUNDS / 2] / 1e3, t[k][ROUNDS * 9 / 10] / 1e3);
    }
    return 0;
}
