/*
 * table.c: the shared-memory tunnel table (see table-t.h). Open addressing
 * with linear probing over a power-of-two number of slots, at most half
 * full. Deleting leaves a tombstone that a later insert reuses; a tombstone
 * followed by an empty slot becomes empty itself, so probe chains do not
 * grow with churn.
 */
#include "shm/table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t hash_id(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static size_t region_size(uint32_t capacity)
{
    size_t sz = sizeof(fy_shm_hdr_t) + (size_t)capacity * sizeof(fy_shm_slot_t);
    long page = sysconf(_SC_PAGESIZE);
    return (sz + (size_t)page - 1) / (size_t)page * (size_t)page;
}

static int map_region(fy_shm_t *s, int fd, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return FY_ERR;
    s->fd = fd;
    s->size = size;
    s->hdr = p;
    s->slots = (fy_shm_slot_t *)(s->hdr + 1);
    return FY_OK;
}

int fy_shm_create(fy_shm_t *s, uint32_t max_tunnels, uint32_t nworkers)
{
    uint32_t cap = 64;
    size_t size;
    int fd;

    if (nworkers > FY_SHM_MAX_WORKERS || max_tunnels == 0 || max_tunnels > (1u << 24)) {
        errno = EINVAL;
        return FY_ERR;
    }
    while (cap < 2 * max_tunnels)
        cap *= 2;
    size = region_size(cap);
    /* Not close-on-exec: a binary upgrade hands the region to the new master. */
    if ((fd = memfd_create("ferry-tunnels", 0)) < 0)
        return FY_ERR;
    if (ftruncate(fd, (off_t)size) < 0 || map_region(s, fd, size) != FY_OK) {
        int e = errno;
        close(fd);
        errno = e;
        return FY_ERR;
    }
    {
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&s->hdr->writer, &ma);
        pthread_mutexattr_destroy(&ma);
    }
    s->hdr->magic = FY_SHM_MAGIC;
    s->hdr->version = FY_SHM_VERSION;
    s->hdr->capacity = cap;
    s->hdr->max_tunnels = max_tunnels;
    s->hdr->nworkers = nworkers;
    return FY_OK;
}

int fy_shm_attach(fy_shm_t *s, int fd)
{
    fy_shm_hdr_t hdr;
    struct stat st;
    /* An inherited fd is trusted only as far as its header and size agree:
     * a short region would fault on the first lookup. */
    if (pread(fd, &hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr) || hdr.magic != FY_SHM_MAGIC
        || hdr.version != FY_SHM_VERSION || hdr.capacity == 0 || hdr.capacity > (1u << 25)
        || (hdr.capacity & (hdr.capacity - 1)) != 0 || fstat(fd, &st) < 0
        || (size_t)st.st_size < region_size(hdr.capacity)) {
        errno = EINVAL;
        return FY_ERR;
    }
    return map_region(s, fd, region_size(hdr.capacity));
}

void fy_shm_detach(fy_shm_t *s)
{
    if (s->hdr != NULL)
        munmap(s->hdr, s->size);
    s->hdr = NULL;
    s->slots = NULL;
}

/* --- readers ------------------------------------------------------------------ */

static void copy_out(const fy_shm_slot_t *sl, uint32_t index, fy_shm_entry_t *e)
{
    memcpy(e->id, sl->id, sizeof(e->id));
    memcpy(e->session, sl->session, sizeof(e->session));
    memcpy(e->holder, sl->holder, sizeof(e->holder));
    memcpy(e->agent_addr, sl->agent_addr, sizeof(e->agent_addr));
    e->connected_since = sl->connected_since;
    e->nowners = FY_MIN(sl->nowners, (uint32_t)FY_SHM_MAX_OWNERS);
    e->generation = sl->generation;
    memcpy(e->owners, sl->owners, sizeof(e->owners));
    e->requests = atomic_load_explicit(&sl->requests, memory_order_relaxed);
    e->bytes_in = atomic_load_explicit(&sl->bytes_in, memory_order_relaxed);
    e->bytes_out = atomic_load_explicit(&sl->bytes_out, memory_order_relaxed);
    e->index = index;
    e->id[FY_SHM_ID_LEN - 1] = '\0';
    e->session[FY_SHM_TOKEN_LEN - 1] = '\0';
    e->holder[FY_SHM_TOKEN_LEN - 1] = '\0';
    e->agent_addr[sizeof(e->agent_addr) - 1] = '\0';
}

/*
 * One consistent look at slot i: returns its state, and with want (non-NULL
 * id) whether it holds that id, copying it into e when it does.
 */
static uint32_t read_slot(const fy_shm_t *s, uint32_t i, const char *want, fy_shm_entry_t *e, bool *match)
{
    const fy_shm_slot_t *sl = &s->slots[i];
    for (;;) {
        uint32_t s1 = atomic_load_explicit(&sl->seq, memory_order_acquire), s2, state;
        bool m = false;
        if (s1 & 1) {
            continue;   /* the master is writing it: a few instructions */
        }
        state = sl->state;
        if (state == FY_SHM_USED) {
            m = want == NULL || strncmp(sl->id, want, FY_SHM_ID_LEN) == 0;
            if (m && e != NULL)
                copy_out(sl, i, e);
        }
        atomic_thread_fence(memory_order_acquire);
        s2 = atomic_load_explicit(&sl->seq, memory_order_relaxed);
        if (s1 == s2) {
            *match = m;
            return state;
        }
    }
}

static bool lookup_once(const fy_shm_t *s, const char *id, fy_shm_entry_t *e)
{
    uint32_t mask = s->hdr->capacity - 1, h = hash_id(id), i;
    for (i = 0; i <= mask; i++) {
        bool m;
        uint32_t st = read_slot(s, (h + i) & mask, id, e, &m);
        if (st == FY_SHM_EMPTY)
            return false;
        if (m)
            return true;
    }
    return false;
}

bool fy_shm_lookup(const fy_shm_t *s, const char *id, fy_shm_entry_t *e)
{
    for (;;) {
        uint32_t e1 = atomic_load_explicit(&s->hdr->epoch, memory_order_acquire), e2;
        bool found;
        if (e1 & 1)
            continue;   /* a rebuild is moving slots: it takes microseconds */
        found = lookup_once(s, id, e);
        atomic_thread_fence(memory_order_acquire);
        e2 = atomic_load_explicit(&s->hdr->epoch, memory_order_relaxed);
        if (e1 == e2)
            return found;
    }
}

bool fy_shm_read_slot(const fy_shm_t *s, uint32_t i, fy_shm_entry_t *e)
{
    bool m;
    return i < s->hdr->capacity && read_slot(s, i, NULL, e, &m) == FY_SHM_USED && m;
}

/* --- the writer (master) --------------------------------------------------------- */

/* A master that died holding the lock left the slot it wrote odd-sequenced
 * at worst; its writes are single slots, so the table is usable as is. */
static void lock(fy_shm_t *s)
{
    if (pthread_mutex_lock(&s->hdr->writer) == EOWNERDEAD)
        pthread_mutex_consistent(&s->hdr->writer);
}

static void unlock(fy_shm_t *s)
{
    pthread_mutex_unlock(&s->hdr->writer);
}

static void write_begin(fy_shm_slot_t *sl)
{
    uint32_t s = atomic_load_explicit(&sl->seq, memory_order_relaxed);
    atomic_store_explicit(&sl->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

static void write_end(fy_shm_slot_t *sl)
{
    uint32_t s = atomic_load_explicit(&sl->seq, memory_order_relaxed);
    sl->generation++;
    atomic_store_explicit(&sl->seq, s + 1, memory_order_release);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    memset(dst + n, 0, cap - n);
}

/* The slot of id, or -1; *free_slot gets the first reusable slot on the way. */
static int64_t find(fy_shm_t *s, const char *id, int64_t *free_slot)
{
    uint32_t mask = s->hdr->capacity - 1, h = hash_id(id), i;
    *free_slot = -1;
    for (i = 0; i <= mask; i++) {
        uint32_t k = (h + i) & mask;
        fy_shm_slot_t *sl = &s->slots[k];
        if (sl->state == FY_SHM_EMPTY) {
            if (*free_slot < 0)
                *free_slot = k;
            return -1;
        }
        if (sl->state == FY_SHM_TOMBSTONE) {
            if (*free_slot < 0)
                *free_slot = k;
            continue;
        }
        if (strncmp(sl->id, id, FY_SHM_ID_LEN) == 0)
            return k;
    }
    return -1;
}

static int add_owner(fy_shm_t *s, const char *id, const char *session, const char *holder,
                     const char *agent_addr, uint16_t worker, uint32_t conn, int64_t now)
{
    int64_t k, free_slot;
    fy_shm_slot_t *sl;

    if ((k = find(s, id, &free_slot)) >= 0) {
        sl = &s->slots[k];
        if (strncmp(sl->holder, holder, FY_SHM_TOKEN_LEN) != 0)
            return FY_SHM_TAKEN_TOKEN;
        if (strncmp(sl->session, session, FY_SHM_TOKEN_LEN) != 0)
            return FY_SHM_TAKEN_SESSION;
        if (sl->nowners >= FY_SHM_MAX_OWNERS)
            return FY_SHM_TOO_MANY;
        write_begin(sl);
        sl->owners[sl->nowners].worker = worker;
        sl->owners[sl->nowners].conn = conn;
        sl->nowners++;
        write_end(sl);
        return FY_SHM_ADDED;
    }
    if (s->hdr->used >= s->hdr->max_tunnels || free_slot < 0)
        return FY_SHM_FULL;
    sl = &s->slots[free_slot];
    write_begin(sl);
    if (sl->state == FY_SHM_TOMBSTONE)
        s->hdr->tombstones--;
    copy_str(sl->id, sizeof(sl->id), id);
    copy_str(sl->session, sizeof(sl->session), session);
    copy_str(sl->holder, sizeof(sl->holder), holder);
    copy_str(sl->agent_addr, sizeof(sl->agent_addr), agent_addr);
    sl->connected_since = now;
    memset(sl->owners, 0, sizeof(sl->owners));
    sl->owners[0].worker = worker;
    sl->owners[0].conn = conn;
    sl->nowners = 1;
    atomic_store_explicit(&sl->requests, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->bytes_in, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->bytes_out, 0, memory_order_relaxed);
    sl->state = FY_SHM_USED;
    write_end(sl);
    s->hdr->used++;
    return FY_SHM_ADDED;
}

static void rebuild(fy_shm_t *s);

/* Empty slot k: a tombstone, or empty when the chain ends right after it
 * (and then the tombstones just before it end the chain too). */
static void delete_slot(fy_shm_t *s, uint32_t k)
{
    uint32_t mask = s->hdr->capacity - 1;
    fy_shm_slot_t *sl = &s->slots[k];

    write_begin(sl);
    sl->state = FY_SHM_TOMBSTONE;
    sl->nowners = 0;
    write_end(sl);
    s->hdr->used--;
    s->hdr->tombstones++;
    while (s->slots[(k + 1) & mask].state == FY_SHM_EMPTY && s->slots[k].state == FY_SHM_TOMBSTONE) {
        sl = &s->slots[k];
        write_begin(sl);
        sl->state = FY_SHM_EMPTY;
        write_end(sl);
        s->hdr->tombstones--;
        k = (k - 1) & mask;
    }
    /* Tombstones inside long clusters survive that; past a quarter of the
     * table, lookups of absent ids would crawl: start afresh. */
    if (s->hdr->tombstones > s->hdr->capacity / 4)
        rebuild(s);
}

/*
 * Re-insert every live tunnel into a clean table, in place. Readers see the
 * odd epoch and wait; it is O(capacity) and rare (a quarter of the table in
 * tombstones between two rebuilds).
 */
static void rebuild(fy_shm_t *s)
{
    uint32_t cap = s->hdr->capacity, mask = cap - 1, k, n = 0;
    fy_shm_slot_t *live = malloc((size_t)s->hdr->used * sizeof(*live));
    uint32_t ep;

    if (live == NULL)
        return;   /* stays correct, only slower; the next delete tries again */
    for (k = 0; k < cap; k++)
        if (s->slots[k].state == FY_SHM_USED)
            memcpy(&live[n++], &s->slots[k], sizeof(*live));
    ep = atomic_load_explicit(&s->hdr->epoch, memory_order_relaxed);
    atomic_store_explicit(&s->hdr->epoch, ep + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (k = 0; k < cap; k++) {
        fy_shm_slot_t *sl = &s->slots[k];
        if (sl->state == FY_SHM_EMPTY)
            continue;
        write_begin(sl);
        sl->state = FY_SHM_EMPTY;
        write_end(sl);
    }
    for (k = 0; k < n; k++) {
        uint32_t j = hash_id(live[k].id) & mask;
        while (s->slots[j].state != FY_SHM_EMPTY)
            j = (j + 1) & mask;
        write_begin(&s->slots[j]);
        /* Everything but the sequence counter; owners' counter updates
         * that race the move may land on the old slot (statistics only). */
        memcpy((char *)&s->slots[j] + sizeof(s->slots[j].seq), (char *)&live[k] + sizeof(live[k].seq),
               sizeof(*live) - sizeof(live[k].seq));
        write_end(&s->slots[j]);
    }
    s->hdr->tombstones = 0;
    atomic_store_explicit(&s->hdr->epoch, ep + 2, memory_order_release);
    free(live);
}

static void drop_owner(fy_shm_t *s, uint32_t k, uint32_t j)
{
    fy_shm_slot_t *sl = &s->slots[k];
    if (sl->nowners == 1) {
        delete_slot(s, k);
        return;
    }
    write_begin(sl);
    sl->owners[j] = sl->owners[sl->nowners - 1];
    sl->nowners--;
    write_end(sl);
}

int fy_shm_add_owner(fy_shm_t *s, const char *id, const char *session, const char *holder,
                     const char *agent_addr, uint16_t worker, uint32_t conn, int64_t now)
{
    int rc;
    lock(s);
    rc = add_owner(s, id, session, holder, agent_addr, worker, conn, now);
    unlock(s);
    return rc;
}

static bool remove_owner(fy_shm_t *s, const char *id, uint16_t worker, uint32_t conn)
{
    int64_t k, free_slot;
    uint32_t j;

    if ((k = find(s, id, &free_slot)) < 0)
        return false;
    for (j = 0; j < s->slots[k].nowners; j++) {
        if (s->slots[k].owners[j].worker == worker && s->slots[k].owners[j].conn == conn) {
            drop_owner(s, (uint32_t)k, j);
            return true;
        }
    }
    return false;
}

bool fy_shm_remove_owner(fy_shm_t *s, const char *id, uint16_t worker, uint32_t conn)
{
    bool rc;
    lock(s);
    rc = remove_owner(s, id, worker, conn);
    unlock(s);
    return rc;
}

uint32_t fy_shm_sweep_worker(fy_shm_t *s, uint16_t worker)
{
    uint32_t k, j, removed = 0;
    lock(s);
    for (k = 0; k < s->hdr->capacity; k++) {
        fy_shm_slot_t *sl = &s->slots[k];
        if (sl->state != FY_SHM_USED)
            continue;
        for (j = 0; j < sl->nowners;) {
            if (sl->owners[j].worker == worker) {
                if (sl->nowners == 1) {
                    removed++;
                    delete_slot(s, k);
                    break;
                }
                drop_owner(s, k, j);
            } else {
                j++;
            }
        }
    }
    unlock(s);
    return removed;
}
