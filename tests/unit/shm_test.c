#include "tests/unit/unit.h"
/*
 * shm_test.c: the shared-memory tunnel table (shm/table.c, included here so
 * that hash_id and the slots are reachable): create and attach (magic,
 * version, bad fds), add/lookup/remove, up to FY_SHM_MAX_OWNERS owners,
 * holder and session conflicts, max_tunnels, sweeping a dead worker,
 * tombstone reuse under heavy churn (bookkeeping and probe lengths stay
 * bounded), and readers in several processes racing the single writer
 * without ever seeing a torn slot.
 */

#include "shm/table.c"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* --- helpers --------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* xorshift64*: deterministic, fast, good enough to pick keys. */
static uint64_t rnd_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return rnd_state * 2685821657736338717ull;
}

static int add(fy_shm_t *s, const char *id, const char *session, const char *holder, uint16_t worker, uint32_t conn)
{
    return fy_shm_add_owner(s, id, session, holder, "127.0.0.1:5555", worker, conn, 1700000000);
}

/* Slots by state, counted the slow way. */
static void count_states(const fy_shm_t *s, uint32_t *used, uint32_t *tomb, uint32_t *empty)
{
    uint32_t i;
    *used = *tomb = *empty = 0;
    for (i = 0; i < s->hdr->capacity; i++) {
        switch (s->slots[i].state) {
        case FY_SHM_USED: (*used)++; break;
        case FY_SHM_TOMBSTONE: (*tomb)++; break;
        default: (*empty)++; break;
        }
    }
}

/* Slots a lookup of id reads before it can answer (found or an EMPTY slot). */
static uint32_t probe_len(const fy_shm_t *s, const char *id)
{
    uint32_t mask = s->hdr->capacity - 1, h = hash_id(id), i;
    for (i = 0; i <= mask; i++) {
        const fy_shm_slot_t *sl = &s->slots[(h + i) & mask];
        if (sl->state == FY_SHM_EMPTY)
            return i + 1;
        if (sl->state == FY_SHM_USED && strncmp(sl->id, id, FY_SHM_ID_LEN) == 0)
            return i + 1;
    }
    return mask + 1;
}

static void check_bookkeeping(const fy_shm_t *s)
{
    uint32_t u, t, e;
    count_states(s, &u, &t, &e);
    cr_assert_eq(s->hdr->used, u, "hdr->used %u, slots in use %u", s->hdr->used, u);
    cr_assert_eq(s->hdr->tombstones, t, "hdr->tombstones %u, tombstone slots %u", s->hdr->tombstones, t);
    cr_assert_gt(e, 0, "no empty slot left: lookups of absent ids scan the whole table");
}

/* --- create and attach ------------------------------------------------------------ */

Test(shm, create_sizes_and_header)
{
    fy_shm_t s;
    struct stat st;

    memset(&s, 0, sizeof(s));
    cr_assert_eq(fy_shm_create(&s, 100, 4), FY_OK);
    cr_assert_geq(s.fd, 0);
    cr_assert_eq(s.hdr->magic, FY_SHM_MAGIC);
    cr_assert_eq(s.hdr->version, FY_SHM_VERSION);
    cr_assert_eq(s.hdr->max_tunnels, 100);
    cr_assert_eq(s.hdr->nworkers, 4);
    cr_assert_eq(s.hdr->capacity & (s.hdr->capacity - 1), 0, "capacity %u is a power of two", s.hdr->capacity);
    cr_assert_geq(s.hdr->capacity, 200, "at most half full: capacity %u for 100 tunnels", s.hdr->capacity);
    cr_assert_eq(s.hdr->used, 0);
    cr_assert_eq(s.hdr->tombstones, 0);
    cr_assert_eq((char *)s.slots, (char *)s.hdr + sizeof(fy_shm_hdr_t));
    cr_assert_eq(fstat(s.fd, &st), 0);
    cr_assert_geq((size_t)st.st_size, sizeof(fy_shm_hdr_t) + s.hdr->capacity * sizeof(fy_shm_slot_t));
    cr_assert_eq((size_t)st.st_size, s.size);
    /* The memfd survives exec (a binary upgrade inherits it). */
    cr_assert_eq(fcntl(s.fd, F_GETFD) & FD_CLOEXEC, 0);
    fy_shm_detach(&s);
    cr_assert_null(s.hdr);
    close(s.fd);

    /* The smallest table still has room, and a big one is sized to fit. */
    cr_assert_eq(fy_shm_create(&s, 1, 1), FY_OK);
    cr_assert_geq(s.hdr->capacity, 2);
    cr_assert_eq(add(&s, "only", "s", "", 0, 1), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "second", "s", "", 0, 2), FY_SHM_FULL);
    fy_shm_detach(&s);
    close(s.fd);
    cr_assert_eq(fy_shm_create(&s, 65536, 64), FY_OK);
    cr_assert_geq(s.hdr->capacity, 131072);
    fy_shm_detach(&s);
    close(s.fd);
}

Test(shm, create_rejects_bad_sizes)
{
    fy_shm_t s;
    memset(&s, 0, sizeof(s));
    errno = 0;
    cr_assert_eq(fy_shm_create(&s, 0, 1), FY_ERR);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_eq(fy_shm_create(&s, 10, FY_SHM_MAX_WORKERS + 1), FY_ERR);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_eq(fy_shm_create(&s, (1u << 24) + 1, 1), FY_ERR);
    cr_assert_eq(errno, EINVAL);
}

Test(shm, attach_shares_the_region)
{
    fy_shm_t a, b;
    fy_shm_entry_t e;

    cr_assert_eq(fy_shm_create(&a, 16, 2), FY_OK);
    cr_assert_eq(fy_shm_attach(&b, a.fd), FY_OK);
    cr_assert_neq((void *)a.hdr, (void *)b.hdr, "a second mapping");
    cr_assert_eq(b.size, a.size);
    cr_assert_eq(b.hdr->capacity, a.hdr->capacity);
    cr_assert_eq(b.hdr->max_tunnels, 16);
    cr_assert_eq(b.hdr->nworkers, 2);
    /* The writer's change is what the other mapping reads, both ways. */
    cr_assert_eq(add(&a, "shared", "sess", "tok", 1, 9), FY_SHM_ADDED);
    cr_assert(fy_shm_lookup(&b, "shared", &e));
    cr_assert_eq(e.owners[0].worker, 1);
    cr_assert_eq(e.owners[0].conn, 9);
    fy_shm_count(&b, e.index, 1, 10, 20);
    cr_assert(fy_shm_lookup(&a, "shared", &e));
    cr_assert_eq(e.requests, 1);
    cr_assert_eq(e.bytes_in, 10);
    cr_assert_eq(e.bytes_out, 20);
    atomic_store(&fy_shm_worker(&b, 1)->pid, 4242);
    cr_assert_eq(atomic_load(&fy_shm_worker(&a, 1)->pid), 4242);
    fy_shm_detach(&b);
    cr_assert(fy_shm_lookup(&a, "shared", &e), "detaching one mapping leaves the other");
    fy_shm_detach(&a);
    close(a.fd);
}

/* A region copy in a fresh memfd with its header changed by fn. */
static int doctored(const fy_shm_t *src, void (*fn)(fy_shm_hdr_t *))
{
    int fd = memfd_create("shm-test", 0);
    fy_shm_hdr_t h;
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (off_t)src->size), 0);
    memcpy(&h, src->hdr, sizeof(h));
    fn(&h);
    cr_assert_eq(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
    return fd;
}

static void bad_magic(fy_shm_hdr_t *h) { h->magic ^= 1; }
static void bad_version(fy_shm_hdr_t *h) { h->version = FY_SHM_VERSION + 1; }
static void bad_capacity(fy_shm_hdr_t *h) { h->capacity = 96; }
static void unchanged(fy_shm_hdr_t *h) { (void)h; }

Test(shm, attach_rejects_bad_fds)
{
    fy_shm_t s, t;
    int fd, p[2];

    memset(&t, 0, sizeof(t));
    cr_assert_eq(fy_shm_create(&s, 16, 2), FY_OK);

    errno = 0;
    cr_assert_eq(fy_shm_attach(&t, -1), FY_ERR, "fd -1");
    cr_assert_null(t.hdr);
    /* A closed fd. */
    fd = memfd_create("shm-test", 0);
    close(fd);
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "closed fd");
    /* An empty memfd, and one of the right size holding zeros. */
    fd = memfd_create("shm-test", 0);
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "empty memfd");
    cr_assert_eq(ftruncate(fd, (off_t)s.size), 0);
    errno = 0;
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "zeroed memfd");
    cr_assert_eq(errno, EINVAL);
    close(fd);
    /* A pipe: not a region at all. */
    cr_assert_eq(pipe(p), 0);
    cr_assert_eq(fy_shm_attach(&t, p[0]), FY_ERR, "pipe");
    close(p[0]);
    close(p[1]);
    /* Wrong magic, wrong layout version, a capacity not a power of two. */
    fd = doctored(&s, bad_magic);
    errno = 0;
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "bad magic");
    cr_assert_eq(errno, EINVAL);
    close(fd);
    fd = doctored(&s, bad_version);
    errno = 0;
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "bad version");
    cr_assert_eq(errno, EINVAL);
    close(fd);
    fd = doctored(&s, bad_capacity);
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "capacity 96");
    close(fd);
    /* The same copy undoctored attaches: the checks above are the cause. */
    fd = doctored(&s, unchanged);
    cr_assert_eq(fy_shm_attach(&t, fd), FY_OK);
    cr_assert_eq(t.hdr->capacity, s.hdr->capacity);
    fy_shm_detach(&t);
    close(fd);
    cr_assert_null(t.hdr);
    fy_shm_detach(&s);
    close(s.fd);
}

/*
 * A header that passes magic and version but whose capacity does not match
 * the file: capacity 0 (mask 0xffffffff: a lookup walks off the mapping) or
 * a memfd shorter than the capacity says (SIGBUS on the first read of a
 * slot past its end). fy_shm_attach accepts both today (see the report);
 * enable this test once attach checks capacity != 0 and fstat's size.
 */
static void zero_capacity(fy_shm_hdr_t *h) { h->capacity = 0; }

Test(shm, attach_rejects_inconsistent_sizes, .disabled = true)
{
    fy_shm_t s, t;
    int fd;

    memset(&t, 0, sizeof(t));
    cr_assert_eq(fy_shm_create(&s, 16, 2), FY_OK);
    fd = doctored(&s, zero_capacity);
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "capacity 0");
    close(fd);
    fd = doctored(&s, unchanged);
    cr_assert_eq(ftruncate(fd, (off_t)sizeof(fy_shm_hdr_t)), 0);
    cr_assert_eq(fy_shm_attach(&t, fd), FY_ERR, "memfd shorter than its capacity");
    close(fd);
    fy_shm_detach(&s);
    close(s.fd);
}

/* --- the writer's operations ------------------------------------------------------ */

Test(shm, add_lookup_remove)
{
    fy_shm_t s;
    fy_shm_entry_t e;
    uint32_t gen;

    cr_assert_eq(fy_shm_create(&s, 16, 4), FY_OK);
    cr_assert_not(fy_shm_lookup(&s, "abc", &e));
    cr_assert_eq(fy_shm_add_owner(&s, "abc", "sess-1", "holder-1", "10.1.2.3:4567", 2, 77, 1234567), FY_SHM_ADDED);
    cr_assert_eq(s.hdr->used, 1);
    memset(&e, 0xAA, sizeof(e));
    cr_assert(fy_shm_lookup(&s, "abc", &e));
    cr_assert_str_eq(e.id, "abc");
    cr_assert_str_eq(e.session, "sess-1");
    cr_assert_str_eq(e.holder, "holder-1");
    cr_assert_str_eq(e.agent_addr, "10.1.2.3:4567");
    cr_assert_eq(e.connected_since, 1234567);
    cr_assert_eq(e.nowners, 1);
    cr_assert_eq(e.owners[0].worker, 2);
    cr_assert_eq(e.owners[0].conn, 77);
    cr_assert_eq(e.requests, 0);
    cr_assert_eq(e.bytes_in, 0);
    cr_assert_eq(e.bytes_out, 0);
    cr_assert_lt(e.index, s.hdr->capacity);
    cr_assert(fy_shm_lookup(&s, "abc", NULL), "lookup without a copy");
    cr_assert_eq(atomic_load(&s.slots[e.index].seq) & 1, 0, "seq even after a write");
    gen = e.generation;
    cr_assert_gt(gen, 0, "a write bumps the generation");

    /* Near misses do not match. */
    cr_assert_not(fy_shm_lookup(&s, "ab", &e));
    cr_assert_not(fy_shm_lookup(&s, "abcd", &e));
    cr_assert_not(fy_shm_lookup(&s, "ABC", &e));
    cr_assert_not(fy_shm_lookup(&s, "", &e));

    /* The slot reads the same through read_slot; other slots are not in use. */
    {
        uint32_t i, n = 0;
        fy_shm_entry_t r;
        for (i = 0; i < s.hdr->capacity; i++) {
            if (fy_shm_read_slot(&s, i, &r)) {
                n++;
                cr_assert_eq(i, e.index);
                cr_assert_str_eq(r.id, "abc");
                cr_assert_eq(r.index, i);
            }
        }
        cr_assert_eq(n, 1);
        cr_assert_not(fy_shm_read_slot(&s, s.hdr->capacity, &r), "out of range");
        cr_assert_not(fy_shm_read_slot(&s, UINT32_MAX, &r), "out of range");
    }

    /* Counters: atomic adds by owners; a new tunnel in the slot starts at 0. */
    cr_assert(fy_shm_lookup(&s, "abc", &e));
    fy_shm_count(&s, e.index, 3, 100, 2000);
    fy_shm_count(&s, e.index, 1, 0, 5);
    cr_assert(fy_shm_lookup(&s, "abc", &e));
    cr_assert_eq(e.requests, 4);
    cr_assert_eq(e.bytes_in, 100);
    cr_assert_eq(e.bytes_out, 2005);
    cr_assert_eq(e.generation, gen, "counters do not change the slot's generation");

    /* Removing the wrong owner changes nothing. */
    cr_assert_not(fy_shm_remove_owner(&s, "abc", 2, 78));
    cr_assert_not(fy_shm_remove_owner(&s, "abc", 3, 77));
    cr_assert_not(fy_shm_remove_owner(&s, "nope", 2, 77));
    cr_assert(fy_shm_lookup(&s, "abc", &e));
    cr_assert_eq(e.generation, gen);
    cr_assert_eq(s.hdr->used, 1);

    cr_assert(fy_shm_remove_owner(&s, "abc", 2, 77));
    cr_assert_not(fy_shm_lookup(&s, "abc", &e));
    cr_assert_eq(s.hdr->used, 0);
    cr_assert_not(fy_shm_remove_owner(&s, "abc", 2, 77), "already gone");
    check_bookkeeping(&s);

    /* Back again: fresh counters, a later generation in the same table. */
    cr_assert_eq(fy_shm_add_owner(&s, "abc", "sess-2", "holder-2", "10.9.9.9:1", 0, 1, 99), FY_SHM_ADDED);
    cr_assert(fy_shm_lookup(&s, "abc", &e));
    cr_assert_str_eq(e.session, "sess-2");
    cr_assert_eq(e.requests, 0);
    cr_assert_eq(e.bytes_out, 0);
    cr_assert_eq(e.connected_since, 99);
    check_bookkeeping(&s);
    fy_shm_detach(&s);
    close(s.fd);
}

Test(shm, longest_strings_fit)
{
    fy_shm_t s;
    fy_shm_entry_t e;
    char id[64], sess[65], holder[65], addr[64];

    memset(id, 'a', 63), id[63] = '\0';
    memset(sess, 's', 64), sess[64] = '\0';
    memset(holder, 'h', 64), holder[64] = '\0';
    memset(addr, '9', 63), addr[63] = '\0';
    cr_assert_eq(fy_shm_create(&s, 4, 1), FY_OK);
    cr_assert_eq(fy_shm_add_owner(&s, id, sess, holder, addr, 0, 1, 5), FY_SHM_ADDED);
    cr_assert(fy_shm_lookup(&s, id, &e));
    cr_assert_str_eq(e.id, id);
    cr_assert_str_eq(e.session, sess);
    cr_assert_str_eq(e.holder, holder);
    cr_assert_str_eq(e.agent_addr, addr);
    /* A further connection of the same session matches at full length. */
    cr_assert_eq(fy_shm_add_owner(&s, id, sess, holder, addr, 0, 2, 5), FY_SHM_ADDED);
    cr_assert(fy_shm_lookup(&s, id, &e));
    cr_assert_eq(e.nowners, 2);
    fy_shm_detach(&s);
    close(s.fd);
}

Test(shm, owners_up_to_four)
{
    fy_shm_t s;
    fy_shm_entry_t e;
    uint32_t i, gen;
    bool seen[4] = {false};

    cr_assert_eq(fy_shm_create(&s, 8, 4), FY_OK);
    for (i = 0; i < FY_SHM_MAX_OWNERS; i++)
        cr_assert_eq(add(&s, "multi", "sess", "tok", (uint16_t)i, 100 + i), FY_SHM_ADDED, "owner %u", i);
    cr_assert(fy_shm_lookup(&s, "multi", &e));
    cr_assert_eq(e.nowners, 4);
    for (i = 0; i < 4; i++) {
        cr_assert_eq(e.owners[i].conn, 100 + e.owners[i].worker);
        seen[e.owners[i].worker] = true;
    }
    cr_assert(seen[0] && seen[1] && seen[2] && seen[3]);
    cr_assert_eq(s.hdr->used, 1, "one tunnel, four connections");
    gen = e.generation;

    cr_assert_eq(add(&s, "multi", "sess", "tok", 0, 200), FY_SHM_TOO_MANY);
    cr_assert(fy_shm_lookup(&s, "multi", &e));
    cr_assert_eq(e.nowners, 4);
    cr_assert_eq(e.generation, gen, "a refusal writes nothing");

    /* Drop one in the middle: the other three stay, and there is room again. */
    cr_assert(fy_shm_remove_owner(&s, "multi", 1, 101));
    cr_assert(fy_shm_lookup(&s, "multi", &e));
    cr_assert_eq(e.nowners, 3);
    cr_assert_gt(e.generation, gen);
    for (i = 0; i < 3; i++) {
        cr_assert_neq(e.owners[i].worker, 1);
        cr_assert_eq(e.owners[i].conn, 100 + e.owners[i].worker);
    }
    cr_assert_eq(add(&s, "multi", "sess", "tok", 3, 300), FY_SHM_ADDED, "same worker, another connection");
    cr_assert(fy_shm_lookup(&s, "multi", &e));
    cr_assert_eq(e.nowners, 4);
    cr_assert_eq(add(&s, "multi", "sess", "tok", 1, 101), FY_SHM_TOO_MANY);

    /* The slot goes with its last owner, not before. */
    cr_assert(fy_shm_remove_owner(&s, "multi", 3, 103));
    cr_assert(fy_shm_remove_owner(&s, "multi", 0, 100));
    cr_assert(fy_shm_remove_owner(&s, "multi", 2, 102));
    cr_assert(fy_shm_lookup(&s, "multi", &e));
    cr_assert_eq(e.nowners, 1);
    cr_assert_eq(e.owners[0].worker, 3);
    cr_assert_eq(e.owners[0].conn, 300);
    cr_assert(fy_shm_remove_owner(&s, "multi", 3, 300));
    cr_assert_not(fy_shm_lookup(&s, "multi", &e));
    cr_assert_eq(s.hdr->used, 0);
    check_bookkeeping(&s);
    fy_shm_detach(&s);
    close(s.fd);
}

Test(shm, holder_and_session_conflicts)
{
    fy_shm_t s;
    fy_shm_entry_t e;
    uint32_t gen;

    cr_assert_eq(fy_shm_create(&s, 8, 4), FY_OK);
    cr_assert_eq(add(&s, "x", "sess-a", "tok-a", 0, 1), FY_SHM_ADDED);
    cr_assert(fy_shm_lookup(&s, "x", &e));
    gen = e.generation;

    /* Another token: refused whatever the session. */
    cr_assert_eq(add(&s, "x", "sess-a", "tok-b", 1, 2), FY_SHM_TAKEN_TOKEN);
    cr_assert_eq(add(&s, "x", "sess-b", "tok-b", 1, 2), FY_SHM_TAKEN_TOKEN);
    cr_assert_eq(add(&s, "x", "sess-a", "", 1, 2), FY_SHM_TAKEN_TOKEN);
    /* Same token, another session (another agent with the same token). */
    cr_assert_eq(add(&s, "x", "sess-b", "tok-a", 1, 2), FY_SHM_TAKEN_SESSION);
    cr_assert_eq(add(&s, "x", "", "tok-a", 1, 2), FY_SHM_TAKEN_SESSION);
    /* Prefixes are not the same string. */
    cr_assert_eq(add(&s, "x", "sess-a", "tok-a2", 1, 2), FY_SHM_TAKEN_TOKEN);
    cr_assert_eq(add(&s, "x", "sess-a2", "tok-a", 1, 2), FY_SHM_TAKEN_SESSION);
    cr_assert_eq(add(&s, "x", "sess", "tok-a", 1, 2), FY_SHM_TAKEN_SESSION);
    cr_assert(fy_shm_lookup(&s, "x", &e));
    cr_assert_eq(e.nowners, 1);
    cr_assert_eq(e.generation, gen, "refusals write nothing");
    cr_assert_str_eq(e.session, "sess-a");
    cr_assert_str_eq(e.holder, "tok-a");

    /* Auth off: holder "" for everyone, sessions tell agents apart. */
    cr_assert_eq(add(&s, "y", "sess-1", "", 0, 3), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "y", "sess-2", "", 1, 4), FY_SHM_TAKEN_SESSION);
    cr_assert_eq(add(&s, "y", "sess-1", "", 1, 4), FY_SHM_ADDED);

    /* Once the holder is gone, another one may take the id. */
    cr_assert(fy_shm_remove_owner(&s, "x", 0, 1));
    cr_assert_eq(add(&s, "x", "sess-b", "tok-b", 1, 2), FY_SHM_ADDED);
    cr_assert(fy_shm_lookup(&s, "x", &e));
    cr_assert_str_eq(e.holder, "tok-b");
    cr_assert_str_eq(e.session, "sess-b");
    check_bookkeeping(&s);
    fy_shm_detach(&s);
    close(s.fd);
}

Test(shm, full_at_max_tunnels)
{
    fy_shm_t s;
    char id[16];
    int i;

    cr_assert_eq(fy_shm_create(&s, 3, 2), FY_OK);
    for (i = 0; i < 3; i++) {
        snprintf(id, sizeof(id), "t%d", i);
        cr_assert_eq(add(&s, id, "s", "", 0, (uint32_t)i), FY_SHM_ADDED);
    }
    cr_assert_eq(s.hdr->used, 3);
    cr_assert_eq(add(&s, "t3", "s", "", 0, 3), FY_SHM_FULL);
    cr_assert_eq(add(&s, "t4", "other", "tok", 1, 4), FY_SHM_FULL);
    cr_assert_not(fy_shm_lookup(&s, "t3", NULL));
    cr_assert_eq(s.hdr->used, 3);
    /* A full table still takes further connections of its tunnels... */
    cr_assert_eq(add(&s, "t1", "s", "", 1, 10), FY_SHM_ADDED);
    /* ...and conflicts are still told as such. */
    cr_assert_eq(add(&s, "t1", "s2", "", 1, 11), FY_SHM_TAKEN_SESSION);
    /* Room again once a tunnel goes (not when only a connection goes). */
    cr_assert(fy_shm_remove_owner(&s, "t1", 1, 10));
    cr_assert_eq(add(&s, "t3", "s", "", 0, 3), FY_SHM_FULL);
    cr_assert(fy_shm_remove_owner(&s, "t0", 0, 0));
    cr_assert_eq(add(&s, "t3", "s", "", 0, 3), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "t0", "s", "", 0, 0), FY_SHM_FULL);
    cr_assert_eq(s.hdr->used, 3);
    check_bookkeeping(&s);
    fy_shm_detach(&s);
    close(s.fd);
}

Test(shm, sweep_removes_only_that_worker)
{
    fy_shm_t s;
    fy_shm_entry_t e;
    uint32_t gen_c, gen_b, gen_d, i;

    cr_assert_eq(fy_shm_create(&s, 16, 4), FY_OK);
    /* a: only worker 2 (two connections); b: workers 1 and 2; c: worker 1;
     * d: 2, 3, 2, 3; e: worker 2; f: worker 0. */
    cr_assert_eq(add(&s, "a", "sa", "", 2, 1), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "a", "sa", "", 2, 2), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "b", "sb", "", 1, 3), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "b", "sb", "", 2, 4), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "c", "sc", "", 1, 5), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "d", "sd", "", 2, 6), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "d", "sd", "", 3, 7), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "d", "sd", "", 2, 8), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "d", "sd", "", 3, 9), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "e", "se", "", 2, 10), FY_SHM_ADDED);
    cr_assert_eq(add(&s, "f", "sf", "", 0, 11), FY_SHM_ADDED);
    cr_assert_eq(s.hdr->used, 6);
    cr_assert(fy_shm_lookup(&s, "b", &e));
    gen_b = e.generation;
    cr_assert(fy_shm_lookup(&s, "c", &e));
    gen_c = e.generation;
    cr_assert(fy_shm_lookup(&s, "d", &e));
    gen_d = e.generation;

    cr_assert_eq(fy_shm_sweep_worker(&s, 2), 2, "a and e were only on worker 2");
    cr_assert_eq(s.hdr->used, 4);
    cr_assert_not(fy_shm_lookup(&s, "a", &e));
    cr_assert_not(fy_shm_lookup(&s, "e", &e));
    cr_assert(fy_shm_lookup(&s, "b", &e));
    cr_assert_eq(e.nowners, 1);
    cr_assert_eq(e.owners[0].worker, 1);
    cr_assert_eq(e.owners[0].conn, 3);
    cr_assert_gt(e.generation, gen_b, "a swept slot's generation moves");
    cr_assert(fy_shm_lookup(&s, "c", &e));
    cr_assert_eq(e.nowners, 1);
    cr_assert_eq(e.generation, gen_c, "an untouched slot is not rewritten");
    cr_assert(fy_shm_lookup(&s, "d", &e));
    cr_assert_eq(e.nowners, 2);
    cr_assert_gt(e.generation, gen_d);
    for (i = 0; i < e.nowners; i++)
        cr_assert_eq(e.owners[i].worker, 3);
    cr_assert(e.owners[0].conn + e.owners[1].conn == 7 + 9);
    cr_assert(fy_shm_lookup(&s, "f", &e));
    /* No owner of worker 2 is left anywhere. */
    for (i = 0; i < s.hdr->capacity; i++) {
        fy_shm_entry_t r;
        uint32_t k;
        if (!fy_shm_read_slot(&s, i, &r))
            continue;
        for (k = 0; k < r.nowners; k++)
            cr_assert_neq(r.owners[k].worker, 2, "tunnel %s still has an owner on worker 2", r.id);
    }
    cr_assert_eq(fy_shm_sweep_worker(&s, 2), 0, "nothing left to sweep");
    cr_assert_eq(fy_shm_sweep_worker(&s, 9), 0, "a worker that owns nothing");
    check_bookkeeping(&s);

    /* Sweeping every worker empties the table. */
    cr_assert_eq(fy_shm_sweep_worker(&s, 1) + fy_shm_sweep_worker(&s, 3) + fy_shm_sweep_worker(&s, 0), 4);
    cr_assert_eq(s.hdr->used, 0);
    check_bookkeeping(&s);
    cr_assert_eq(s.hdr->tombstones, 0, "an empty table has no tombstones left");
    fy_shm_detach(&s);
    close(s.fd);
}

/* Many ids in one probe chain: deletes in its middle leave tombstones that the
 * next insert reuses, and a removed tail gives the chain back. */
Test(shm, tombstones_in_a_chain)
{
    fy_shm_t s;
    char ids[64][16];
    uint32_t n = 0, i, h0, mask;
    int64_t k, fs;

    cr_assert_eq(fy_shm_create(&s, 32, 1), FY_OK);   /* 64 slots */
    mask = s.hdr->capacity - 1;
    /* Find 8 ids that hash to the same home slot. */
    h0 = hash_id("chain-0") & mask;
    strcpy(ids[n++], "chain-0");
    for (i = 1; n < 8 && i < 1000000; i++) {
        char id[16];
        snprintf(id, sizeof(id), "chain-%u", i);
        if ((hash_id(id) & mask) == h0)
            strcpy(ids[n++], id);
    }
    cr_assert_eq(n, 8);
    for (i = 0; i < n; i++)
        cr_assert_eq(add(&s, ids[i], "s", "", 0, i), FY_SHM_ADDED);
    for (i = 0; i < n; i++) {
        k = find(&s, ids[i], &fs);
        cr_assert_eq(k, (int64_t)((h0 + i) & mask), "linear probing puts %s at home+%u", ids[i], i);
    }
    /* Delete 2 and 4 from the middle: tombstones, the chain still finds 7. */
    cr_assert(fy_shm_remove_owner(&s, ids[2], 0, 2));
    cr_assert(fy_shm_remove_owner(&s, ids[4], 0, 4));
    cr_assert_eq(s.hdr->tombstones, 2);
    cr_assert_eq(s.slots[(h0 + 2) & mask].state, FY_SHM_TOMBSTONE);
    for (i = 0; i < n; i++)
        cr_assert_eq(fy_shm_lookup(&s, ids[i], NULL), i != 2 && i != 4, "%s", ids[i]);
    /* Re-adding an id that lives further down (past the tombstones) finds
     * it: a further owner, not a duplicate in the first tombstone. */
    cr_assert_eq(add(&s, ids[7], "s", "", 0, 70), FY_SHM_ADDED);
    cr_assert_eq(s.hdr->used, 6);
    cr_assert_eq(s.hdr->tombstones, 2);
    cr_assert_eq(find(&s, ids[7], &fs), (int64_t)((h0 + 7) & mask));
    cr_assert_eq(fs, (int64_t)((h0 + 2) & mask), "the first reusable slot is the first tombstone");
    cr_assert(fy_shm_remove_owner(&s, ids[7], 0, 70));
    /* A new id of the chain takes the first tombstone. */
    cr_assert_eq(add(&s, ids[4], "s", "", 0, 40), FY_SHM_ADDED);
    cr_assert_eq(s.hdr->tombstones, 1);
    cr_assert_eq(find(&s, ids[4], &fs), (int64_t)((h0 + 2) & mask));
    check_bookkeeping(&s);
    /* Removing the tail 7, 6, 5 gives the chain back: those slots and the
     * old tombstone at +4 before them become empty; +3 (ids[3]) stops it. */
    cr_assert(fy_shm_remove_owner(&s, ids[7], 0, 7));
    cr_assert(fy_shm_remove_owner(&s, ids[6], 0, 6));
    cr_assert(fy_shm_remove_owner(&s, ids[5], 0, 5));
    for (i = 4; i < 8; i++)
        cr_assert_eq(s.slots[(h0 + i) & mask].state, FY_SHM_EMPTY, "slot home+%u", i);
    cr_assert_eq(s.slots[(h0 + 3) & mask].state, FY_SHM_USED);
    cr_assert_eq(s.hdr->tombstones, 0);
    cr_assert_eq(s.hdr->used, 4);
    check_bookkeeping(&s);
    for (i = 0; i < n; i++) {
        bool want = i == 0 || i == 1 || i == 3 || i == 4;
        cr_assert_eq(fy_shm_lookup(&s, ids[i], NULL), want, "%s", ids[i]);
    }
    fy_shm_detach(&s);
    close(s.fd);
}

/*
 * 200,000 random inserts and deletes over a pool of ids, the table kept
 * between a quarter and all of max_tunnels: lookups stay right, used and
 * tombstones match the slots, an empty slot always remains (so a lookup of
 * an absent id stops), and probe chains stay short.
 */
Test(shm, tombstone_reuse_under_churn, .timeout = 60)
{
    enum { MAXT = 1024, POOL = 4096, OPS = 200000 };
    static bool live[POOL];
    static uint32_t conn_of[POOL];
    fy_shm_t s;
    char id[32];
    uint32_t nlive = 0, i, op, worst_tomb = 0, worst_probe = 0;
    uint64_t total_probe = 0, t0, ms;

    cr_assert_eq(fy_shm_create(&s, MAXT, 4), FY_OK);
    memset(live, 0, sizeof(live));
    for (op = 0; op < OPS; op++) {
        uint32_t k = (uint32_t)(rnd() % POOL);
        snprintf(id, sizeof(id), "churn-%u", k);
        if (live[k]) {
            cr_assert(fy_shm_remove_owner(&s, id, (uint16_t)(k % 4), conn_of[k]), "op %u: remove %s", op, id);
            live[k] = false;
            nlive--;
        } else {
            int rc = add(&s, id, "s", "", (uint16_t)(k % 4), op);
            if (nlive >= MAXT) {
                cr_assert_eq(rc, FY_SHM_FULL, "op %u: %u live, add %s", op, nlive, id);
                continue;
            }
            cr_assert_eq(rc, FY_SHM_ADDED, "op %u: %u live, add %s", op, nlive, id);
            live[k] = true;
            conn_of[k] = op;
            nlive++;
        }
        cr_assert_eq(s.hdr->used, nlive, "op %u", op);
        cr_assert_leq(s.hdr->used + s.hdr->tombstones, s.hdr->capacity, "op %u", op);
        if (s.hdr->tombstones > worst_tomb)
            worst_tomb = s.hdr->tombstones;
        if (op % 20000 == 0)
            check_bookkeeping(&s);
    }
    check_bookkeeping(&s);
    /* Every id is where the bookkeeping says. */
    for (i = 0; i < POOL; i++) {
        snprintf(id, sizeof(id), "churn-%u", i);
        cr_assert_eq(fy_shm_lookup(&s, id, NULL), live[i], "%s", id);
    }
    /* Absent ids: every lookup stops at an empty slot, soon. */
    t0 = now_ms();
    for (i = 0; i < 100000; i++) {
        uint32_t p;
        snprintf(id, sizeof(id), "absent-%u", i);
        cr_assert_not(fy_shm_lookup(&s, id, NULL));
        p = probe_len(&s, id);
        total_probe += p;
        if (p > worst_probe)
            worst_probe = p;
    }
    ms = now_ms() - t0;
    fprintf(stderr, "shm churn: %u ops, capacity %u, %u live, %u tombstones (worst %u), "
            "absent lookups: mean probe %.2f, worst %u, 100k in %llu ms\n",
            OPS, s.hdr->capacity, s.hdr->used, s.hdr->tombstones, worst_tomb,
            (double)total_probe / 100000.0, worst_probe, (unsigned long long)ms);
    cr_assert_lt(worst_probe, s.hdr->capacity / 4, "a lookup of an absent id probed %u of %u slots",
                 worst_probe, s.hdr->capacity);
    cr_assert_lt((double)total_probe / 100000.0, 16.0, "absent lookups probe %.1f slots on average",
                 (double)total_probe / 100000.0);

    /* Emptying the table leaves no tombstone behind. */
    for (i = 0; i < POOL; i++) {
        if (!live[i])
            continue;
        snprintf(id, sizeof(id), "churn-%u", i);
        cr_assert(fy_shm_remove_owner(&s, id, (uint16_t)(i % 4), conn_of[i]));
    }
    cr_assert_eq(s.hdr->used, 0);
    cr_assert_eq(s.hdr->tombstones, 0, "%u tombstones in an empty table", s.hdr->tombstones);
    check_bookkeeping(&s);
    fy_shm_detach(&s);
    close(s.fd);
}

/* The same churn at the limit: the table stays at max_tunnels (half of its
 * slots) while ids come and go, the hardest case for tombstones. */
Test(shm, tombstones_bounded_at_the_limit, .timeout = 60)
{
    enum { MAXT = 256, POOL = 2048, OPS = 200000 };
    static bool live[POOL];
    static uint32_t conn_of[POOL];
    fy_shm_t s;
    char id[32];
    uint32_t nlive = 0, i, op, worst_tomb = 0, worst_probe = 0;

    cr_assert_eq(fy_shm_create(&s, MAXT, 4), FY_OK);
    memset(live, 0, sizeof(live));
    for (op = 0; op < OPS; op++) {
        uint32_t k = (uint32_t)(rnd() % POOL);
        snprintf(id, sizeof(id), "edge-%u", k);
        /* Fill to the limit, then alternate: remove one live, add one new. */
        if (nlive < MAXT && !live[k]) {
            cr_assert_eq(add(&s, id, "s", "", 0, op), FY_SHM_ADDED, "op %u", op);
            live[k] = true, conn_of[k] = op, nlive++;
        } else if (live[k]) {
            cr_assert(fy_shm_remove_owner(&s, id, 0, conn_of[k]), "op %u", op);
            live[k] = false, nlive--;
        } else {
            cr_assert_eq(add(&s, id, "s", "", 0, op), FY_SHM_FULL, "op %u", op);
        }
        if (s.hdr->tombstones > worst_tomb)
            worst_tomb = s.hdr->tombstones;
        cr_assert_lt(s.hdr->used + s.hdr->tombstones, s.hdr->capacity,
                     "op %u: %u used + %u tombstones fill all %u slots", op, s.hdr->used, s.hdr->tombstones,
                     s.hdr->capacity);
    }
    check_bookkeeping(&s);
    for (i = 0; i < 20000; i++) {
        uint32_t p;
        snprintf(id, sizeof(id), "missing-%u", i);
        cr_assert_not(fy_shm_lookup(&s, id, NULL));
        if ((p = probe_len(&s, id)) > worst_probe)
            worst_probe = p;
    }
    fprintf(stderr, "shm churn at the limit: capacity %u, %u live, %u tombstones (worst %u), worst absent probe %u\n",
            s.hdr->capacity, s.hdr->used, s.hdr->tombstones, worst_tomb, worst_probe);
    cr_assert_lt(worst_probe, s.hdr->capacity / 2, "an absent lookup probed %u of %u slots", worst_probe,
                 s.hdr->capacity);
    for (i = 0; i < POOL; i++) {
        snprintf(id, sizeof(id), "edge-%u", i);
        cr_assert_eq(fy_shm_lookup(&s, id, NULL), live[i], "%s", id);
    }
    fy_shm_detach(&s);
    close(s.fd);
}

/* --- readers in other processes racing the writer -------------------------------- */

/*
 * Every field a slot holds is derived from one number g, the generation of
 * its last (re)insert: session, holder and agent address spell g over their
 * whole length, connected_since is g, every owner's conn is g and the owner's
 * worker is its position in the order of insertion (distinct, < 4). A reader
 * that ever copies a slot whose fields disagree has seen a torn write.
 *
 * Besides the churning ids, a few stable ids are inserted before the readers
 * start and never touched: a lookup must find each of them every time, and a
 * scan of every slot (what /api/tunnels does) must list each exactly once,
 * even while the writer's churn makes the table reorganise itself.
 */
#define RACE_STABLE  6
#define RACE_READERS 3
#define RACE_MS      2000

static void spell(char *dst, size_t cap, char tag, uint32_t g)
{
    size_t i, n = cap - 1;
    char hex[9];
    snprintf(hex, sizeof(hex), "%08x", g);
    dst[0] = tag;
    for (i = 1; i < n; i++)
        dst[i] = hex[(i - 1) % 8];
    dst[n] = '\0';
}

static uint32_t race_ids;   /* churning ids of the current run */

static const char *race_id(uint32_t i)
{
    static char ids[4][16];
    static unsigned next;
    char *b = ids[next++ % 4];
    snprintf(b, sizeof(ids[0]), "race-%u", i);
    return b;
}

static const char *stable_id(uint32_t i)
{
    static char ids[RACE_STABLE][16];
    snprintf(ids[i], sizeof(ids[i]), "stable-%u", i);
    return ids[i];
}

static int insert_g(fy_shm_t *s, const char *id, uint16_t worker, uint32_t g)
{
    char sess[FY_SHM_TOKEN_LEN], holder[FY_SHM_TOKEN_LEN], addr[64];
    spell(sess, sizeof(sess), 's', g);
    spell(holder, sizeof(holder), 'h', g);
    spell(addr, sizeof(addr), 'a', g);
    return fy_shm_add_owner(s, id, sess, holder, addr, worker, g, g);
}

/* NULL if e is consistent with itself (and is id when id != NULL), else why. */
static const char *torn(const fy_shm_entry_t *e, const char *id)
{
    char want[FY_SHM_TOKEN_LEN];
    uint32_t g = (uint32_t)e->connected_since, k;
    bool seen[FY_SHM_MAX_OWNERS] = {false};

    if (id != NULL && strcmp(e->id, id) != 0)
        return "id";
    if (strncmp(e->id, "race-", 5) != 0 && strncmp(e->id, "stable-", 7) != 0)
        return "id prefix";
    if (e->connected_since <= 0 || e->connected_since > UINT32_MAX)
        return "connected_since";
    spell(want, sizeof(e->session), 's', g);
    if (strcmp(e->session, want) != 0)
        return "session";
    spell(want, sizeof(e->holder), 'h', g);
    if (strcmp(e->holder, want) != 0)
        return "holder";
    spell(want, sizeof(e->agent_addr), 'a', g);
    if (strcmp(e->agent_addr, want) != 0)
        return "agent_addr";
    if (e->nowners < 1 || e->nowners > FY_SHM_MAX_OWNERS)
        return "nowners";
    for (k = 0; k < e->nowners; k++) {
        if (e->owners[k].conn != g)
            return "owner conn";
        if (e->owners[k].worker >= FY_SHM_MAX_OWNERS || seen[e->owners[k].worker])
            return "owner worker";
        seen[e->owners[k].worker] = true;
    }
    return NULL;
}

/* Exit codes: 0 fine, 1 torn read, 2 attach failed, 3 saw nothing, 4 a
 * lookup missed a stable id, 5 a scan missed or repeated a stable id, 6 a
 * stable id's generation went back. */
static int race_reader(int fd, unsigned seed)
{
    fy_shm_t s;
    fy_shm_entry_t e;
    uint64_t deadline = now_ms() + RACE_MS, found = 0, reads = 0, scans = 0, moved = 0;
    uint32_t lastgen[RACE_STABLE] = {0}, i;
    const char *why;

    rnd_state ^= (uint64_t)seed * 0x2545F4914F6CDD1Dull;
    if (fy_shm_attach(&s, fd) != FY_OK)
        return 2;
    while (now_ms() < deadline) {
        for (i = 0; i < 2000; i++) {
            bool stable = (i & 7) == 0;
            uint32_t k = (uint32_t)(rnd() % (stable ? RACE_STABLE : race_ids));
            const char *id = stable ? stable_id(k) : race_id(k);
            reads++;
            if (!fy_shm_lookup(&s, id, &e)) {
                if (stable) {
                    fprintf(stderr, "reader %d: lookup of %s (never removed) missed it\n", (int)getpid(), id);
                    return 4;
                }
                continue;
            }
            found++;
            if ((why = torn(&e, id)) != NULL) {
                fprintf(stderr, "reader %d: torn lookup of %s (%s): gen %u session %.12s holder %.12s addr %.12s "
                        "since %lld nowners %u\n", (int)getpid(), id, why, e.generation, e.session,
                        e.holder, e.agent_addr, (long long)e.connected_since, e.nowners);
                return 1;
            }
            if (stable) {
                if ((int32_t)(e.generation - lastgen[k]) < 0) {
                    fprintf(stderr, "reader %d: %s generation went back from %u to %u\n", (int)getpid(), id,
                            lastgen[k], e.generation);
                    return 6;
                }
                lastgen[k] = e.generation;
            }
        }
        /* A scan of every slot, as /api/tunnels does: consistent copies,
         * and each stable id exactly once when the table was not rebuilt
         * under the scan (the header's epoch is odd while the master moves
         * slots; a scan that saw it move is not a snapshot and is retried,
         * as a lookup does). */
        {
            uint32_t seen[RACE_STABLE] = {0};
            uint32_t e1 = atomic_load_explicit(&s.hdr->epoch, memory_order_acquire), e2;
            if (e1 & 1)
                continue;
            scans++;
            for (i = 0; i < s.hdr->capacity; i++) {
                if (!fy_shm_read_slot(&s, i, &e))
                    continue;
                reads++;
                if ((why = torn(&e, NULL)) != NULL) {
                    fprintf(stderr, "reader %d: torn slot %u (%s)\n", (int)getpid(), i, why);
                    return 1;
                }
                if (strncmp(e.id, "stable-", 7) == 0)
                    seen[atoi(e.id + 7) % RACE_STABLE]++;
            }
            atomic_thread_fence(memory_order_acquire);
            e2 = atomic_load_explicit(&s.hdr->epoch, memory_order_relaxed);
            if (e1 != e2) {
                moved++;
                continue;
            }
            for (i = 0; i < RACE_STABLE; i++) {
                if (seen[i] != 1) {
                    fprintf(stderr, "reader %d: scan %llu listed %s %u times\n", (int)getpid(),
                            (unsigned long long)scans, stable_id(i), seen[i]);
                    return 5;
                }
            }
        }
    }
    fprintf(stderr, "reader %d: %llu reads, %llu found, %llu scans (%llu under a rebuild), none torn\n",
            (int)getpid(), (unsigned long long)reads, (unsigned long long)found, (unsigned long long)scans,
            (unsigned long long)moved);
    fy_shm_detach(&s);
    return found > 0 ? 0 : 3;
}

static void race(uint32_t nids, uint32_t max_tunnels)
{
    fy_shm_t s;
    pid_t kids[RACE_READERS];
    int status[RACE_READERS];
    bool done[RACE_READERS] = {false};
    uint32_t *gen_of = calloc(nids, sizeof(uint32_t)), *nown = calloc(nids, sizeof(uint32_t));
    uint16_t (*owners)[FY_SHM_MAX_OWNERS] = calloc(nids, sizeof(*owners));
    uint32_t g = 0, left = RACE_READERS, i, reorganised = 0;
    uint64_t writes = 0, deadline;

    cr_assert(gen_of && nown && owners);
    race_ids = nids;
    /* More ids than max_tunnels: the table runs at its limit (half full),
     * where tombstones pile up fastest and the master rebuilds it. */
    cr_assert_eq(fy_shm_create(&s, max_tunnels, 4), FY_OK);
    for (i = 0; i < RACE_STABLE; i++)
        cr_assert_eq(insert_g(&s, stable_id(i), 0, ++g), FY_SHM_ADDED);
    for (i = 0; i < nids && s.hdr->used < max_tunnels; i += 2) {
        cr_assert_eq(insert_g(&s, race_id(i), 0, ++g), FY_SHM_ADDED);
        gen_of[i] = g, nown[i] = 1, owners[i][0] = 0;
    }
    fflush(NULL);
    for (i = 0; i < RACE_READERS; i++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0)
            _exit(race_reader(s.fd, i + 1));
        kids[i] = pid;
    }

    /* The writer: insert, add and remove owners, delete and re-insert with a
     * new g, until every reader is done (bounded). */
    deadline = now_ms() + RACE_MS + 20000;
    while (left > 0) {
        for (i = 0; i < 1000; i++) {
            uint32_t k = (uint32_t)(rnd() % nids), j, ep = atomic_load(&s.hdr->epoch);
            uint64_t r = rnd();
            if (nown[k] == 0) {
                bool full = s.hdr->used >= max_tunnels;
                cr_assert_eq(insert_g(&s, race_id(k), 0, ++g), full ? FY_SHM_FULL : FY_SHM_ADDED);
                if (!full)
                    gen_of[k] = g, nown[k] = 1, owners[k][0] = 0;
            } else if ((r & 3) == 0 && nown[k] < FY_SHM_MAX_OWNERS) {
                /* Another connection: the lowest worker index not yet used. */
                bool used[FY_SHM_MAX_OWNERS] = {false};
                uint16_t wkr = 0;
                for (j = 0; j < nown[k]; j++)
                    used[owners[k][j]] = true;
                while (used[wkr])
                    wkr++;
                cr_assert_eq(insert_g(&s, race_id(k), wkr, gen_of[k]), FY_SHM_ADDED);
                owners[k][nown[k]++] = wkr;
            } else {
                /* Drop one connection (the last one drops the tunnel). */
                j = (uint32_t)((r >> 8) % nown[k]);
                cr_assert(fy_shm_remove_owner(&s, race_id(k), owners[k][j], gen_of[k]));
                owners[k][j] = owners[k][--nown[k]];
            }
            if (atomic_load(&s.hdr->epoch) != ep)
                reorganised++;   /* the master rebuilt the table (slots moved) */
            writes++;
        }
        for (i = 0; i < RACE_READERS; i++) {
            if (!done[i] && waitpid(kids[i], &status[i], WNOHANG) == kids[i]) {
                done[i] = true;
                left--;
            }
        }
        if (now_ms() > deadline) {
            for (i = 0; i < RACE_READERS; i++) {
                if (!done[i]) {
                    kill(kids[i], SIGKILL);
                    waitpid(kids[i], &status[i], 0);
                    done[i] = true;
                }
            }
            cr_assert_fail("readers did not finish within %d ms", RACE_MS + 20000);
        }
    }
    fprintf(stderr, "writer (%u ids, %u slots): %llu writes, last g %u, table rebuilt %u times\n", nids,
            s.hdr->capacity, (unsigned long long)writes, g, reorganised);
    for (i = 0; i < RACE_READERS; i++) {
        cr_assert(WIFEXITED(status[i]), "reader %u died (signal %d)", i, WIFSIGNALED(status[i]) ? WTERMSIG(status[i]) : 0);
        cr_assert_eq(WEXITSTATUS(status[i]), 0,
                     "reader %u exited %d (1 torn read, 2 attach, 3 saw nothing, 4 lookup missed a stable id, "
                     "5 a scan missed or repeated a stable id, 6 generation went back)", i, WEXITSTATUS(status[i]));
    }
    cr_assert_gt(writes, 10000, "the writer kept writing while the readers read");
    for (i = 0; i < RACE_STABLE; i++)
        cr_assert(fy_shm_lookup(&s, stable_id(i), NULL));
    check_bookkeeping(&s);
    fy_shm_detach(&s);
    close(s.fd);
    free(gen_of);
    free(nown);
    free(owners);
}

/* A small table: short chains, constant slot reuse, frequent rebuilds. */
Test(shm, readers_in_other_processes_never_see_a_torn_slot, .timeout = 60)
{
    race(80, 32);
}

/* A bigger one at its limit: rebuilds long enough for readers to meet them. */
Test(shm, readers_race_rebuilds_of_a_full_table, .timeout = 60)
{
    race(10000, 4096);
}
