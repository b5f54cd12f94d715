/*
 * ev.c: epoll loop, timer heap and deferred tasks (see ev.h).
 */
#include "ev/ev.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FY_EV_BATCH 256

struct fy_ev_s {
    int          epfd;
    uint64_t     now;
    bool         stop;
    fy_timer_t **heap;      /* min-heap on deadline */
    size_t       nheap;
    size_t       capheap;
    fy_task_t   *tasks;     /* FIFO of queued tasks */
    fy_task_t   *tasks_tail;
};

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

fy_ev_t *fy_ev_new(void)
{
    fy_ev_t *ev = calloc(1, sizeof(*ev));
    if (ev == NULL)
        return NULL;
    ev->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (ev->epfd < 0) {
        free(ev);
        return NULL;
    }
    ev->now = monotonic_ms();
    return ev;
}

void fy_ev_free(fy_ev_t *ev)
{
    if (ev == NULL)
        return;
    close(ev->epfd);
    free(ev->heap);
    free(ev);
}

uint64_t fy_ev_now(const fy_ev_t *ev) { return ev->now; }
void fy_ev_stop(fy_ev_t *ev) { ev->stop = true; }

int fy_io_set(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    struct epoll_event e;

    if (io->added && io->events == events)
        return FY_OK;
    memset(&e, 0, sizeof(e));
    e.events = events;
    e.data.ptr = io;
    if (!io->added) {
        if (epoll_ctl(ev->epfd, EPOLL_CTL_ADD, io->fd, &e) < 0)
            return FY_ERR;
        io->added = true;
    } else if (epoll_ctl(ev->epfd, EPOLL_CTL_MOD, io->fd, &e) < 0) {
        return FY_ERR;
    }
    io->events = events;
    return FY_OK;
}

int fy_io_move(fy_ev_t *ev, fy_io_t *from, fy_io_t *to, uint32_t events)
{
    struct epoll_event e;

    to->fd = from->fd;
    if (!from->added)
        return fy_io_set(ev, to, events);
    memset(&e, 0, sizeof(e));
    e.events = events;
    e.data.ptr = to;
    if (epoll_ctl(ev->epfd, EPOLL_CTL_MOD, to->fd, &e) < 0)
        return FY_ERR;
    /* An event of this batch still naming from is skipped (not added). */
    from->added = false;
    from->events = 0;
    to->added = true;
    to->events = events;
    return FY_OK;
}

void fy_io_del(fy_ev_t *ev, fy_io_t *io)
{
    if (io->added) {
        epoll_ctl(ev->epfd, EPOLL_CTL_DEL, io->fd, NULL);
        io->added = false;
        io->events = 0;
    }
}

void fy_io_forget(fy_io_t *io)
{
    io->added = false;
    io->events = 0;
}

/* Heap helpers: slot is index + 1 so that 0 means "not armed". */
static void heap_place(fy_ev_t *ev, size_t i, fy_timer_t *t)
{
    ev->heap[i] = t;
    t->slot = i + 1;
}

static void heap_up(fy_ev_t *ev, size_t i)
{
    fy_timer_t *t = ev->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (ev->heap[p]->deadline <= t->deadline)
            break;
        heap_place(ev, i, ev->heap[p]);
        i = p;
    }
    heap_place(ev, i, t);
}

static void heap_down(fy_ev_t *ev, size_t i)
{
    fy_timer_t *t = ev->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t md = t->deadline;
        if (l < ev->nheap && ev->heap[l]->deadline < md) {
            m = l;
            md = ev->heap[l]->deadline;
        }
        if (r < ev->nheap && ev->heap[r]->deadline < md)
            m = r;
        if (m == i)
            break;
        heap_place(ev, i, ev->heap[m]);
        i = m;
    }
    heap_place(ev, i, t);
}

void fy_timer_stop(fy_ev_t *ev, fy_timer_t *t)
{
    size_t i;
    fy_timer_t *last;

    if (t->slot == 0)
        return;
    i = t->slot - 1;
    t->slot = 0;
    last = ev->heap[--ev->nheap];
    if (i == ev->nheap)
        return;
    ev->heap[i] = last;
    last->slot = i + 1;
    if (i > 0 && ev->heap[(i - 1) / 2]->deadline > last->deadline)
        heap_up(ev, i);
    else
        heap_down(ev, i);
}

void fy_timer_arm_at(fy_ev_t *ev, fy_timer_t *t, uint64_t deadline)
{
    if (t->slot != 0) {
        uint64_t old = t->deadline;
        t->deadline = deadline;
        if (deadline < old)
            heap_up(ev, t->slot - 1);
        else
            heap_down(ev, t->slot - 1);
        return;
    }
    if (ev->nheap == ev->capheap) {
        size_t ncap = ev->capheap ? ev->capheap * 2 : 256;
        fy_timer_t **h = realloc(ev->heap, ncap * sizeof(*h));
        fy_assert(h != NULL); /* a timer that cannot be armed would hang a connection */
        ev->heap = h;
        ev->capheap = ncap;
    }
    t->deadline = deadline;
    ev->heap[ev->nheap] = t;
    t->slot = ++ev->nheap;
    heap_up(ev, ev->nheap - 1);
}

void fy_timer_arm(fy_ev_t *ev, fy_timer_t *t, uint64_t ms)
{
    fy_timer_arm_at(ev, t, ev->now + ms);
}

void fy_task_queue(fy_ev_t *ev, fy_task_t *t)
{
    if (t->queued)
        return;
    t->queued = true;
    t->next = NULL;
    t->prev = ev->tasks_tail;
    if (ev->tasks_tail != NULL)
        ev->tasks_tail->next = t;
    else
        ev->tasks = t;
    ev->tasks_tail = t;
}

void fy_task_cancel(fy_ev_t *ev, fy_task_t *t)
{
    if (!t->queued)
        return;
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        ev->tasks = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    else
        ev->tasks_tail = t->prev;
    t->next = t->prev = NULL;
    t->queued = false;
}

void fy_ev_run_tasks(fy_ev_t *ev)
{
    /* One task at a time off the head, so that a task may cancel (free)
     * others; bounded, so that tasks that queue tasks cannot starve the poll. */
    unsigned budget = 4096;
    fy_task_t *t;

    while (budget-- > 0 && (t = ev->tasks) != NULL) {
        fy_task_cancel(ev, t);
        t->cb(ev, t);
    }
}

bool fy_ev_tasks_pending(const fy_ev_t *ev) { return ev->tasks != NULL; }

static void run_timers(fy_ev_t *ev)
{
    while (ev->nheap > 0 && ev->heap[0]->deadline <= ev->now) {
        fy_timer_t *t = ev->heap[0];
        fy_timer_stop(ev, t);
        t->cb(ev, t);
    }
}

int fy_ev_run_once(fy_ev_t *ev)
{
    struct epoll_event events[FY_EV_BATCH];
    int n, i, timeout = -1;

    fy_ev_run_tasks(ev);
    if (ev->tasks != NULL) {
        timeout = 0;
    } else if (ev->nheap > 0) {
        uint64_t d = ev->heap[0]->deadline;
        timeout = d <= ev->now ? 0 : (int)FY_MIN(d - ev->now, 60000);
    }
    n = epoll_wait(ev->epfd, events, FY_EV_BATCH, timeout);
    ev->now = monotonic_ms();
    if (n < 0)
        return errno == EINTR ? FY_OK : FY_ERR;
    for (i = 0; i < n; i++) {
        fy_io_t *io = events[i].data.ptr;
        /* An earlier callback of this batch may have removed it. */
        if (io->added)
            io->cb(ev, io, events[i].events);
    }
    run_timers(ev);
    return FY_OK;
}

void fy_ev_run(fy_ev_t *ev)
{
    ev->stop = false;
    while (!ev->stop)
        if (fy_ev_run_once(ev) != FY_OK)
            break;
}
