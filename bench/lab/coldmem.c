/*
 * coldmem - what a cache line costs after an idle gap, on a fresh or an
 * already mapped 4 KiB page, with and without transparent huge pages.
 *
 *   coldmem           prints one line per case: ns per access (median of
 *                     400 rounds; each round sleeps 10 ms, then follows a
 *                     chain of N pointers in random order)
 *
 * Why: an idle tunnel's packet arrives after milliseconds of sleep; what
 * the packet path then pays per distinct line and per distinct page it
 * touches decides whether to shrink the lines, the pages, or neither. The
 * chain is dependent (each load needs the previous one), like the pointer
 * walks of a packet pass, so it measures latency, not bandwidth.
 *
 * Cases: lines 320 bytes apart (a few lines per page, few pages), one line
 * per page (4,160 bytes apart: every access a new page), each on 4 KiB
 * pages (MADV_NOHUGEPAGE) and on 2 MiB pages (MADV_HUGEPAGE, when the
 * kernel gives them: AnonHugePages is printed).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "lab.h"

enum { ROUNDS = 400, REGION = 8 << 20, HUGE = 2 << 20 };

/* Links n slots `stride` bytes apart into one cycle in random order. */
static void **chain(char *base, int n, size_t stride)
{
    int *order = malloc(n * sizeof *order);
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = rand() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < n; i++)
        *(void **)(base + order[i] * stride) = base + order[(i + 1) % n] * stride;
    void **head = (void **)(base + order[0] * stride);
    free(order);
    return head;
}

static long anon_huge_kb(void)
{
    char line[256];
    long kb = 0;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static void run(int n, size_t stride, int huge)
{
    char *raw = mmap(NULL, REGION + HUGE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    char *base = (char *)(((uintptr_t)raw + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    madvise(base, REGION, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    memset(base, 1, REGION);
    void **head = chain(base, n, stride);
    uint64_t t[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        usleep(10000);
        uint64_t a = now_ns();
        void **p = head;
        for (int i = 0; i < n; i++) {
            p = (void **)*p;
            __asm__ volatile("" : "+r"(p));
        }
        t[r] = now_ns() - a;
    }
    qsort(t, ROUNDS, sizeof t[0], by_value);
    printf("%4d lines %5zu bytes apart, %s pages (AnonHugePages %5ld kB): %6.1f ns per access\n",
           n, stride, huge ? "2 MiB" : "4 KiB", anon_huge_kb(), (double)t[ROUNDS / 2] / n);
    munmap(raw, REGION + HUGE);
}

int main(void)
{
    for (int huge = 0; huge < 2; huge++) {
        run(256, 320, huge);
        run(256, 4160, huge);
    }
    return 0;
}
