/*
 * chan.c: control channels and handoff mailboxes (see chan.h).
 */
#include "worker/chan.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define CHAN_QUEUE_MAX (4096 * sizeof(fy_ctl_msg_t))
#define MAILBOX_BUF    (16u * 1024 * 1024)   /* bursts of handoffs must not hit EAGAIN at once */

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);

int fy_chan_pair(int fds[2])
{
    int i, sz = (int)MAILBOX_BUF;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0)
        return FY_ERR;
    for (i = 0; i < 2; i++) {
        /* As root the buffer may pass wmem_max; otherwise take what we get. */
        if (setsockopt(fds[i], SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
            setsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
        if (setsockopt(fds[i], SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0)
            setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    }
    return FY_OK;
}

int fy_chan_open(fy_chan_t *ch, fy_ev_t *ev, int fd, fy_chan_cb on_msg, void (*on_close)(fy_chan_t *), void *data)
{
    memset(ch, 0, sizeof(*ch));
    ch->io.fd = fd;
    ch->io.cb = on_io;
    ch->io.data = ch;
    ch->ev = ev;
    ch->on_msg = on_msg;
    ch->on_close = on_close;
    ch->data = data;
    return fy_io_set(ev, &ch->io, EPOLLIN);
}

void fy_chan_close(fy_chan_t *ch)
{
    if (ch->closed)
        return;
    ch->closed = true;
    fy_io_del(ch->ev, &ch->io);
    close(ch->io.fd);
    ch->io.fd = -1;
    fy_buf_free(&ch->out);
}

static void flush(fy_chan_t *ch)
{
    while (fy_buf_len(&ch->out) >= sizeof(fy_ctl_msg_t)) {
        ssize_t n = send(ch->io.fd, fy_buf_data(&ch->out), sizeof(fy_ctl_msg_t), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            fy_chan_close(ch);
            if (ch->on_close)
                ch->on_close(ch);
            return;
        }
        fy_buf_consume(&ch->out, sizeof(fy_ctl_msg_t));
    }
    if (fy_io_set(ch->ev, &ch->io, fy_buf_len(&ch->out) ? EPOLLIN | EPOLLOUT : EPOLLIN) != FY_OK)
        return;
    fy_buf_release_if_empty(&ch->out);
}

int fy_chan_send(fy_chan_t *ch, const fy_ctl_msg_t *m)
{
    if (ch->closed)
        return FY_ERR;
    if (fy_buf_append(&ch->out, m, sizeof(*m), CHAN_QUEUE_MAX) != FY_OK)
        return FY_ERR;
    flush(ch);
    return FY_OK;
}

int fy_chan_send_fds(fy_chan_t *ch, const fy_ctl_msg_t *m, const int *fds, int nfds)
{
    struct iovec iov = {(void *)m, sizeof(*m)};
    struct msghdr mh;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * FY_CTL_MAX_FDS)];
    } ctl;
    struct cmsghdr *cm;

    if (ch->closed || fy_buf_len(&ch->out) > 0 || nfds <= 0 || nfds > FY_CTL_MAX_FDS)
        return FY_ERR;
    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    while (sendmsg(ch->io.fd, &mh, MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            return FY_ERR;
    return FY_OK;
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_chan_t *ch = io->data;
    int i;

    if (events & EPOLLOUT)
        flush(ch);
    for (i = 0; i < 64 && !ch->closed; i++) {
        fy_ctl_msg_t m;
        struct iovec iov = {&m, sizeof(m)};
        struct msghdr mh;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * FY_CTL_MAX_FDS)];
        } ctl;
        struct cmsghdr *cm;
        int fds[FY_CTL_MAX_FDS], nfds = 0;
        ssize_t n;

        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        n = recvmsg(io->fd, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            fy_chan_close(ch);
            if (ch->on_close)
                ch->on_close(ch);
            return;
        }
        for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                size_t k, cnt = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (k = 0; k < cnt; k++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(cm) + k * sizeof(int), sizeof(int));
                    if (nfds < FY_CTL_MAX_FDS)
                        fds[nfds++] = fd;
                    else
                        close(fd);
                }
            }
        }
        if ((size_t)n != sizeof(m) || (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
            while (nfds > 0)
                close(fds[--nfds]);   /* not one of ours: ignore it, leak nothing */
            continue;
        }
        m.id[sizeof(m.id) - 1] = '\0';
        m.session[sizeof(m.session) - 1] = '\0';
        m.holder[sizeof(m.holder) - 1] = '\0';
        m.addr[sizeof(m.addr) - 1] = '\0';
        ch->on_msg(ch, &m, fds, nfds);
    }
}

int fy_handoff_send(int mailbox, const fy_handoff_hdr_t *h, const void *bytes, int fd)
{
    struct iovec iov[2];
    struct msghdr mh;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct cmsghdr *cm;

    iov[0].iov_base = (void *)h;
    iov[0].iov_len = sizeof(*h);
    iov[1].iov_base = (void *)bytes;
    iov[1].iov_len = h->len;
    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));
    mh.msg_iov = iov;
    mh.msg_iovlen = h->len ? 2 : 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof(ctl.buf);
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    for (;;) {
        if (sendmsg(mailbox, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
            return FY_OK;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == ENOBUFS ? FY_AGAIN : FY_ERR;
    }
}

ssize_t fy_handoff_recv(int mailbox, void *buf, size_t cap, int *fd)
{
    struct iovec iov;
    struct msghdr mh;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } ctl;
    struct cmsghdr *cm;
    const fy_handoff_hdr_t *h = buf;
    ssize_t n;
    int nfds = 0, fds[4];

    *fd = -1;
    iov.iov_base = buf;
    iov.iov_len = cap;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof(ctl.buf);
    do
        n = recvmsg(mailbox, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN ? FY_AGAIN : FY_ERR;
    for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t k, cnt = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (k = 0; k < cnt && nfds < 4; k++)
                memcpy(&fds[nfds++], CMSG_DATA(cm) + k * sizeof(int), sizeof(int));
        }
    }
    /* Exactly one fd, a whole message, the length it claims: else drop it all. */
    if ((mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) || nfds != 1 || (size_t)n < sizeof(*h)
        || h->magic != FY_HANDOFF_MAGIC || (size_t)n != sizeof(*h) + h->len) {
        while (nfds > 0)
            close(fds[--nfds]);
        return FY_ERR;
    }
    *fd = fds[0];
    return n;
}
