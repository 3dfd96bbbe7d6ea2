/*
 * lab.h - what the lab's cold-cost programs (coldmem, coldsend, coldrecv,
 * coldclock) share: a monotonic clock in ns, a qsort comparator for the
 * timings, and a fatal error.
 */
#ifndef SEGMESH_LAB_H
#define SEGMESH_LAB_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Orders uint64_t timings (for qsort). */
static inline int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static inline void die(const char *what) {
    perror(what);
    exit(1);
}

#endif
