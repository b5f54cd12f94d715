/*
 * pipe.c: pooled pipes for splice(2) (see pipe.h).
 */
#include "pipe/pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_KEEP 32    /* empty pipes kept for reuse */

static fy_pipe_t *pool[POOL_KEEP];
static unsigned npool;
static unsigned nused;     /* handed out and not yet put back */
static bool enabled = true;

void fy_pipe_enable(bool on)
{
    enabled = on;
    if (!on)
        fy_pipe_pool_free();   /* turned off by a reload: no idle pipe stays */
}

bool fy_pipe_enabled(void)
{
    return enabled;
}

fy_pipe_t *fy_pipe_get(void)
{
    fy_pipe_t *p;
    int fds[2];
    int sz;

    if (!enabled || nused >= FY_PIPE_MAX)
        return NULL;
    if (npool > 0) {
        nused++;
        return pool[--npool];
    }
    if ((p = malloc(sizeof(*p))) == NULL)
        return NULL;
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        free(p);
        return NULL;
    }
    /* A bigger pipe takes a whole 64 KiB message plus what is left of the
     * last one; the kernel may refuse (pipe-max-size), then the default does. */
    (void)fcntl(fds[1], F_SETPIPE_SZ, (int)FY_PIPE_SIZE);
    sz = fcntl(fds[1], F_GETPIPE_SZ);
    p->rfd = fds[0];
    p->wfd = fds[1];
    p->len = 0;
    p->cap = sz > 0 ? (size_t)sz : 65536;
    nused++;
    return p;
}

void fy_pipe_put(fy_pipe_t *p)
{
    if (p == NULL)
        return;
    nused--;
    if (p->len == 0 && enabled && npool < POOL_KEEP) {
        pool[npool++] = p;
        return;
    }
    close(p->rfd);
    close(p->wfd);
    free(p);
}

ssize_t fy_pipe_fill(fy_pipe_t *p, int fd, size_t max)
{
    ssize_t n;

    do
        n = splice(fd, NULL, p->wfd, NULL, max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        p->len += (size_t)n;
    return n;
}

ssize_t fy_pipe_drain(fy_pipe_t *p, int fd, size_t max, bool more)
{
    ssize_t n;

    do
        n = splice(p->rfd, NULL, fd, NULL, max,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (more ? SPLICE_F_MORE : 0));
    while (n < 0 && errno == EINTR);
    if (n > 0)
        p->len -= (size_t)n;
    return n;
}

fy_pipe_t *fy_pipe_offer(fy_pipe_t **pp, size_t *max, uint64_t limit)
{
    if (*pp == NULL && (*pp = fy_pipe_get()) == NULL)
        return NULL;
    *max = (size_t)FY_MIN((uint64_t)*max, FY_MIN(limit, (uint64_t)fy_pipe_room(*pp)));
    return *max > 0 ? *pp : NULL;
}

ssize_t fy_pipe_flush(fy_pipe_t **pp, int fd)
{
    size_t moved = 0;

    while ((*pp)->len > 0) {
        ssize_t n = fy_pipe_drain(*pp, fd, (*pp)->len, false);
        if (n < 0)
            return errno == EAGAIN ? (ssize_t)moved : -1;
        moved += (size_t)n;
    }
    fy_pipe_put(*pp);
    *pp = NULL;
    return (ssize_t)moved;
}

void fy_pipe_pool_free(void)
{
    while (npool > 0) {
        fy_pipe_t *p = pool[--npool];
        close(p->rfd);
        close(p->wfd);
        free(p);
    }
}
