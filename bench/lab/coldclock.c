/*
 * coldclock - what one clock_gettime costs after an idle gap, against the
 * same call again at once (x86-64; cycles from rdtscp around the call).
 *
 *   coldclock          prints one line per clock (CLOCK_MONOTONIC, which
 *                      Rust's Instant::now reads, and CLOCK_MONOTONIC_COARSE):
 *                      p50 / p90 cycles of the first call after a 10 ms
 *                      sleep, p50 of the second (300 rounds)
 *
 * Why: the node's packet path reads the clock once per wakeup, which on an
 * idle tunnel comes after milliseconds asleep; the vDSO's code and data
 * pages may then be out of the caches and the TLB. This says what that
 * read costs, so a cheaper clock can be weighed against it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "lab.h"

enum { ROUNDS = 300 };

static void measure(clockid_t clock, const char *name)
{
    static uint64_t cold[ROUNDS], warm[ROUNDS];
    struct timespec ts;
    unsigned int aux;
    for (int i = 0; i < ROUNDS; i++) {
        usleep(10000);
        unsigned long t0 = __rdtscp(&aux);
        clock_gettime(clock, &ts);
        unsigned long t1 = __rdtscp(&aux);
        clock_gettime(clock, &ts);
        unsigned long t2 = __rdtscp(&aux);
        cold[i] = t1 - t0;
        warm[i] = t2 - t1;
    }
    qsort(cold, ROUNDS, sizeof cold[0], by_value);
    qsort(warm, ROUNDS, sizeof warm[0], by_value);
    printf("%-24s cold p50 %5lu p90 %5lu cycles, warm p50 %4lu\n", name,
           cold[ROUNDS / 2], cold[ROUNDS * 9 / 10], warm[ROUNDS / 2]);
}

int main(void)
{
    measure(CLOCK_MONOTONIC, "CLOCK_MONOTONIC");
    measure(CLOCK_MONOTONIC_COARSE, "CLOCK_MONOTONIC_COARSE");
    return 0;
}
