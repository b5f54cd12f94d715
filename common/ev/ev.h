/*
 * ev.h: the event loop every ferry process runs: epoll (level-triggered)
 * for readiness, a binary min-heap of timers, and a "before poll" list of
 * deferred tasks (Redis's beforeSleep) so that frames queued during one
 * iteration leave in one write.
 *
 * Each fd has one fy_io_t with one callback and an interest mask; changing
 * the mask costs an epoll_ctl only when it really changes.
 */
#ifndef FY_EV_H
#define FY_EV_H

#include "fy.h"

#include <sys/epoll.h>

typedef struct fy_ev_s fy_ev_t;
typedef struct fy_io_s fy_io_t;
typedef struct fy_timer_s fy_timer_t;
typedef struct fy_task_s fy_task_t;

typedef void (*fy_io_cb)(fy_ev_t *ev, fy_io_t *io, uint32_t events);
typedef void (*fy_timer_cb)(fy_ev_t *ev, fy_timer_t *t);
typedef void (*fy_task_cb)(fy_ev_t *ev, fy_task_t *t);

struct fy_io_s {
    int       fd;
    uint32_t  events;     /* current interest: EPOLLIN | EPOLLOUT */
    bool      added;
    fy_io_cb  cb;
    void     *data;
};

struct fy_timer_s {
    uint64_t    deadline;   /* ms, monotonic */
    size_t      slot;       /* heap index + 1; 0 = not armed */
    fy_timer_cb cb;
    void       *data;
};

struct fy_task_s {
    fy_task_t  *next, *prev;
    bool        queued;
    fy_task_cb  cb;
    void       *data;
};

/* Create a loop (returns NULL on failure) and free it. */
fy_ev_t *fy_ev_new(void);
void fy_ev_free(fy_ev_t *ev);

/* The loop's cached monotonic time in ms (updated once per iteration). */
uint64_t fy_ev_now(const fy_ev_t *ev);

/* Register or update io's interest (0 removes it from epoll, keeping the
 * fd open). Returns FY_OK or FY_ERR (errno set). */
int fy_io_set(fy_ev_t *ev, fy_io_t *io, uint32_t events) FY_MUST_USE;
/* Remove io from the loop (call before closing its fd). */
void fy_io_del(fy_ev_t *ev, fy_io_t *io);
/* The same, for an fd about to be closed that is the only descriptor of
 * its file (never dup'd, forked or passed): close() takes it out of epoll,
 * so no epoll_ctl (nginx's NGX_CLOSE_EVENT). */
void fy_io_forget(fy_io_t *io);
/* Hand from's fd and registration over to to, with interest events: one
 * epoll_ctl where a removal and an addition would take two (a kept
 * connection changing owners). from is left out of the loop. */
int fy_io_move(fy_ev_t *ev, fy_io_t *from, fy_io_t *to, uint32_t events) FY_MUST_USE;

/* Arm t to fire at now + ms (re-arms if already armed). */
void fy_timer_arm(fy_ev_t *ev, fy_timer_t *t, uint64_t ms);
void fy_timer_arm_at(fy_ev_t *ev, fy_timer_t *t, uint64_t deadline);
void fy_timer_stop(fy_ev_t *ev, fy_timer_t *t);
static inline bool fy_timer_armed(const fy_timer_t *t) { return t->slot != 0; }

/* Queue t to run once before the next poll (no-op if already queued).
 * Tasks run in the order queued. */
void fy_task_queue(fy_ev_t *ev, fy_task_t *t);
/* Unqueue t: an object that holds a task calls this before it is freed. */
void fy_task_cancel(fy_ev_t *ev, fy_task_t *t);

/* Run one iteration: deferred tasks, poll (bounded by the next timer),
 * io callbacks, due timers. Returns FY_OK or FY_ERR (epoll failed). */
int fy_ev_run_once(fy_ev_t *ev);

/* Run the queued tasks now (at shutdown, so deferred frees happen). */
void fy_ev_run_tasks(fy_ev_t *ev);
/* Tasks are queued (fy_ev_run_tasks runs a bounded batch). */
bool fy_ev_tasks_pending(const fy_ev_t *ev);

/* Run until fy_ev_stop is called. */
void fy_ev_run(fy_ev_t *ev);
void fy_ev_stop(fy_ev_t *ev);

#endif
