/*
 * coldsend - the kernel's cost of one UDP send after an idle gap, through
 * the lab's veth pair (run in namespace mb-a; a receiver in mb-b).
 *
 *   coldsend rx PORT             receive and discard (run in mb-b)
 *   coldsend tx DST PORT GAP_US  600 rounds; each round sends one 128-byte
 *                                datagram from each of three sockets, GAP_US
 *                                asleep before each send, and times the call
 *
 * The four senders: an unconnected dual-stack IPv6 socket with a v4-mapped
 * destination (segmesh-node's listening socket), a connected IPv4 socket
 * (boringtun-cli's per-peer sockets, and segmesh-node's peer sockets for
 * IPv4 endpoints), an unconnected IPv4 socket, and a dual-stack socket
 * connected to the v4-mapped address (segmesh-node's peer sockets before
 * they became IPv4 ones: the kernel keeps no route for it). They
 * alternate within each round, so the host's drift over minutes falls on
 * all alike. The send's time includes the receiving namespace's
 * softirq work and the receiver's wakeup, done in the sender's context on
 * a veth. Why: an unconnected socket looks the route up on every send,
 * a connected one keeps it (sk_dst_cache); after an idle gap that lookup
 * runs on cold caches.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "lab.h"

enum { ROUNDS = 600, SENDERS = 4 };

static void receive(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a)) die("receiver");
    char buf[2048];
    for (;;) recv(s, buf, sizeof buf, 0);
}

static int transmit(const char *dst, int port, long gap_us) {
    int off = 0;
    struct sockaddr_in d4 = {.sin_family = AF_INET, .sin_port = htons(port)};
    struct sockaddr_in6 d6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    char mapped[64];
    snprintf(mapped, sizeof mapped, "::ffff:%s", dst);
    if (inet_pton(AF_INET, dst, &d4.sin_addr) != 1 || inet_pton(AF_INET6, mapped, &d6.sin6_addr) != 1) {
        fprintf(stderr, "coldsend: bad IPv4 address %s\n", dst);
        return 2;
    }
    int v6 = socket(AF_INET6, SOCK_DGRAM, 0), conn = socket(AF_INET, SOCK_DGRAM, 0),
        v4 = socket(AF_INET, SOCK_DGRAM, 0), conn6 = socket(AF_INET6, SOCK_DGRAM, 0);
    if (v6 < 0 || conn < 0 || v4 < 0 || conn6 < 0) die("socket");
    if (setsockopt(v6, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off)) die("IPV6_V6ONLY");
    if (setsockopt(conn6, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off)) die("IPV6_V6ONLY");
    if (connect(conn, (struct sockaddr *)&d4, sizeof d4)) die("connect");
    if (connect(conn6, (struct sockaddr *)&d6, sizeof d6)) die("connect v4-mapped");
    static uint64_t t[SENDERS][ROUNDS];
    const char *name[SENDERS] = {"unconnected IPv6 (v4-mapped)", "connected IPv4", "unconnected IPv4",
                                "connected IPv6 (v4-mapped)"};
    char payload[128] = {4};
    struct timespec gap = {gap_us / 1000000, (gap_us % 1000000) * 1000};
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < SENDERS; k++) {
            nanosleep(&gap, NULL);
            uint64_t t0 = now_ns();
            ssize_t n = k == 0 ? sendto(v6, payload, sizeof payload, 0, (struct sockaddr *)&d6, sizeof d6)
                      : k == 1 ? send(conn, payload, sizeof payload, 0)
                      : k == 2 ? sendto(v4, payload, sizeof payload, 0, (struct sockaddr *)&d4, sizeof d4)
                               : send(conn6, payload, sizeof payload, 0);
            t[k][r] = now_ns() - t0;
            if (n != (ssize_t)sizeof payload) die("send");
        }
    }
    for (int k = 0; k < SENDERS; k++) {
        qsort(t[k], ROUNDS, sizeof t[k][0], by_value);
        printf("%-30s p50 %6.1f us  p90 %6.1f us\n", name[k], t[k][ROUNDS / 2] / 1e3,
               t[k][ROUNDS * 9 / 10] / 1e3);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "rx")) receive(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "tx")) return transmit(argv[2], atoi(argv[3]), atol(argv[4]));
    fprintf(stderr, "usage: coldsend rx PORT | coldsend tx DST PORT GAP_US\n");
    return 2;
}
