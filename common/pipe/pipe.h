/*
 * pipe.h: kernel pipes as the buffer of splice(2). A bulk body (a big
 * download or upload) crosses the relay and the agent socket -> pipe ->
 * socket: the kernel moves page references, the bytes never enter user
 * memory (HAProxy's splicing, for the same reason). Small transfers are
 * cheaper with read/write (a splice costs a system call more), so callers
 * splice only once a transfer shows it is bulk.
 *
 * Pipes are pooled per process and their number is capped; when none is
 * to be had the caller copies as before. A pipe put back with bytes still
 * in it is closed, not pooled.
 */
#ifndef FY_PIPE_H
#define FY_PIPE_H

#include "fy.h"

/* Pipes in use per process at most (two fds each). */
#define FY_PIPE_MAX 256
/* The capacity asked for (the kernel may give less). */
#define FY_PIPE_SIZE (256u * 1024)

typedef struct fy_pipe_s {
    int    rfd;
    int    wfd;
    size_t len;      /* bytes in the pipe */
    size_t cap;      /* what F_GETPIPE_SZ said */
} fy_pipe_t;

/* Splicing can be turned off (ferryd's `splice: false`, reloadable): every
 * caller then copies, and the idle pipes are closed (one still holding
 * bytes closes when drained). On by default. */
void fy_pipe_enable(bool on);
bool fy_pipe_enabled(void);

/* A pipe from the pool, or NULL (off, cap reached, pipe2 failed). */
fy_pipe_t *fy_pipe_get(void);
void fy_pipe_put(fy_pipe_t *p);

static inline size_t fy_pipe_room(const fy_pipe_t *p) { return p->cap - p->len; }

/* splice fd -> pipe, at most max bytes: > 0 moved, 0 end of stream, -1 with
 * errno (EAGAIN: nothing to read now). */
ssize_t fy_pipe_fill(fy_pipe_t *p, int fd, size_t max);
/* splice pipe -> fd, at most max bytes: > 0 moved, -1 with errno (EAGAIN:
 * the socket pushes back). more: further bytes follow at once (SPLICE_F_MORE). */
ssize_t fy_pipe_drain(fy_pipe_t *p, int fd, size_t max, bool more);

/*
 * A connection's pipe (*pp, made when NULL) with room for what it may take:
 * *max is lowered to limit and to the room. NULL when there is no pipe to
 * be had or no room in it.
 */
fy_pipe_t *fy_pipe_offer(fy_pipe_t **pp, size_t *max, uint64_t limit);

/*
 * Drain a connection's pipe to fd until it is empty or fd pushes back;
 * an emptied pipe goes back to the pool (*pp = NULL: an idle connection
 * holds none). Returns the bytes moved, or -1 with errno on an error
 * other than EAGAIN.
 */
ssize_t fy_pipe_flush(fy_pipe_t **pp, int fd);

/* Close the pooled pipes (process teardown). */
void fy_pipe_pool_free(void);

#endif
