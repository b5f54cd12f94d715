/*
 * table.h: the shared-memory tunnel table's API. The master creates the
 * region (memfd, so an upgrade can inherit it) and is its only writer;
 * every worker maps it and reads lock-free.
 */
#ifndef FY_SHM_TABLE_H
#define FY_SHM_TABLE_H

#include "fy.h"
#include "shm/table-t.h"

typedef struct fy_shm_s {
    int            fd;
    size_t         size;
    fy_shm_hdr_t  *hdr;
    fy_shm_slot_t *slots;
} fy_shm_t;

/* A consistent copy of a slot (what readers get). */
typedef struct fy_shm_entry_s {
    char           id[FY_SHM_ID_LEN];
    char           session[FY_SHM_TOKEN_LEN];
    char           holder[FY_SHM_TOKEN_LEN];
    char           agent_addr[64];
    int64_t        connected_since;
    uint32_t       nowners;
    uint32_t       generation;
    fy_shm_owner_t owners[FY_SHM_MAX_OWNERS];
    uint64_t       requests, bytes_in, bytes_out;
    uint32_t       index;                    /* slot index, for counter updates */
} fy_shm_entry_t;

/* Create a region for max_tunnels tunnels and nworkers workers. FY_OK/FY_ERR (errno). */
int fy_shm_create(fy_shm_t *s, uint32_t max_tunnels, uint32_t nworkers) FY_MUST_USE;
/* Map an existing region from its fd (checks magic and version). */
int fy_shm_attach(fy_shm_t *s, int fd) FY_MUST_USE;
void fy_shm_detach(fy_shm_t *s);

/* Reader: look id up. true with *e filled when present. Lock-free. */
bool fy_shm_lookup(const fy_shm_t *s, const char *id, fy_shm_entry_t *e);
/* Reader: consistent copy of slot i; false if the slot is not in use. */
bool fy_shm_read_slot(const fy_shm_t *s, uint32_t i, fy_shm_entry_t *e);

/* Writer (master only). Results of fy_shm_add_owner: */
enum fy_shm_add {
    FY_SHM_ADDED = 0,     /* new tunnel or a further connection of its session */
    FY_SHM_TAKEN_TOKEN,   /* held by another token */
    FY_SHM_TAKEN_SESSION, /* held by another session (same token or auth off) */
    FY_SHM_TOO_MANY,      /* already FY_SHM_MAX_OWNERS connections */
    FY_SHM_FULL,          /* max_tunnels reached */
};
int fy_shm_add_owner(fy_shm_t *s, const char *id, const char *session, const char *holder,
                     const char *agent_addr, uint16_t worker, uint32_t conn, int64_t now);
/* Remove one owner; the slot goes when none is left. true if found. */
bool fy_shm_remove_owner(fy_shm_t *s, const char *id, uint16_t worker, uint32_t conn);
/* Remove every owner on worker (it died). Returns the tunnels removed entirely. */
uint32_t fy_shm_sweep_worker(fy_shm_t *s, uint16_t worker);

/* Owners: count traffic on slot index (atomic adds). */
static inline void fy_shm_count(fy_shm_t *s, uint32_t index, uint64_t requests, uint64_t in, uint64_t out)
{
    fy_shm_slot_t *sl = &s->slots[index];
    if (requests)
        atomic_fetch_add_explicit(&sl->requests, requests, memory_order_relaxed);
    if (in)
        atomic_fetch_add_explicit(&sl->bytes_in, in, memory_order_relaxed);
    if (out)
        atomic_fetch_add_explicit(&sl->bytes_out, out, memory_order_relaxed);
}

static inline fy_shm_worker_t *fy_shm_worker(fy_shm_t *s, unsigned i) { return &s->hdr->workers[i]; }

#endif
