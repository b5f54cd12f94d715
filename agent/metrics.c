/*
 * metrics.c: the numbers of ngrok's tunnel metrics. Rates are
 * exponentially weighted moving averages ticked every 5 s over 1, 5 and 15
 * minutes (as go-metrics, which ngrok uses); percentiles come from the last
 * FY_AGENT_SAMPLES durations.
 */
#include "agent/agent.h"

#include <stdlib.h>
#include <string.h>

/* 1 - e^(-5s / window), precomputed (no libm). */
#define ALPHA_1  0.07995558537067671
#define ALPHA_5  0.01652854617838251
#define ALPHA_15 0.005540151995103271

void fy_meter_mark(fy_meter_t *m, uint64_t n)
{
    m->count += n;
    m->uncounted += n;
}

static void ewma(double *rate, double instant, double alpha, bool init)
{
    if (!init)
        *rate = instant;
    else
        *rate += alpha * (instant - *rate);
}

void fy_meter_tick(fy_meter_t *m)
{
    double instant = (double)m->uncounted / (FY_METER_TICK_MS / 1000.0);
    m->uncounted = 0;
    ewma(&m->r1, instant, ALPHA_1, m->init);
    ewma(&m->r5, instant, ALPHA_5, m->init);
    ewma(&m->r15, instant, ALPHA_15, m->init);
    m->init = true;
}

void fy_sample_add(fy_sample_t *s, double v)
{
    s->v[s->next] = v;
    s->next = (s->next + 1) % FY_AGENT_SAMPLES;
    if (s->n < FY_AGENT_SAMPLES)
        s->n++;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void fy_sample_pcts(const fy_sample_t *s, double out[4])
{
    static const double q[4] = {0.50, 0.90, 0.95, 0.99};
    double sorted[FY_AGENT_SAMPLES];
    unsigned i;

    if (s->n == 0) {
        memset(out, 0, 4 * sizeof(double));
        return;
    }
    memcpy(sorted, s->v, s->n * sizeof(double));
    qsort(sorted, s->n, sizeof(double), cmp_dbl);
    for (i = 0; i < 4; i++) {
        /* go-metrics' interpolation: position p * (n + 1). */
        double pos = q[i] * (double)(s->n + 1);
        if (pos < 1)
            out[i] = sorted[0];
        else if (pos >= (double)s->n)
            out[i] = sorted[s->n - 1];
        else {
            unsigned lo = (unsigned)pos;
            out[i] = sorted[lo - 1] + (pos - (double)lo) * (sorted[lo] - sorted[lo - 1]);
        }
    }
}
