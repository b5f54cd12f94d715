/*
 * table-t.h: the layout of ferryd's shared-memory region (DESIGN.md "The
 * shared-memory table"). Types only, and no pointers: the region maps at a
 * different address in each process. Fixed-width fields, a magic and a
 * layout version, a size check.
 *
 * A master is the only writer of slots (two during a binary upgrade, taking
 * turns on the header's robust mutex); readers never lock: a slot's
 * sequence counter is odd while the master writes it, and a reader retries
 * until it sees the same even value before and after its copy. When
 * tombstones pile up the master rebuilds the table in place; the header's
 * epoch is odd meanwhile, and a lookup that saw it change starts again. The
 * owners of a tunnel update its counters with atomic adds, at a slot index
 * they look up again whenever the epoch moved.
 */
#ifndef FY_SHM_TABLE_T_H
#define FY_SHM_TABLE_T_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define FY_SHM_MAGIC        0x46455259u   /* "FERY" */
#define FY_SHM_VERSION      2u
#define FY_SHM_MAX_WORKERS  64
#define FY_SHM_MAX_OWNERS   4
#define FY_SHM_ID_LEN       64            /* 63 chars + NUL */
#define FY_SHM_TOKEN_LEN    72

enum fy_shm_slot_state { FY_SHM_EMPTY = 0, FY_SHM_USED = 1, FY_SHM_TOMBSTONE = 2 };

typedef struct fy_shm_owner_s {
    uint16_t worker;       /* worker index */
    uint16_t pad;
    uint32_t conn;         /* the owning worker's serial of the agent connection */
} fy_shm_owner_t;

typedef struct fy_shm_slot_s {
    _Atomic uint32_t seq;                    /* odd while the master writes */
    uint32_t         state;                  /* enum fy_shm_slot_state */
    char             id[FY_SHM_ID_LEN];
    char             session[FY_SHM_TOKEN_LEN];
    char             holder[FY_SHM_TOKEN_LEN];
    char             agent_addr[64];
    int64_t          connected_since;        /* unix seconds */
    uint32_t         nowners;
    uint32_t         generation;             /* bumped on every change */
    fy_shm_owner_t   owners[FY_SHM_MAX_OWNERS];
    _Atomic uint64_t requests;               /* updated by owners */
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t bytes_out;
} fy_shm_slot_t;

enum fy_shm_worker_state { FY_SHM_W_DOWN = 0, FY_SHM_W_UP = 1, FY_SHM_W_DRAINING = 2 };

typedef struct fy_shm_worker_s {
    _Atomic int32_t  pid;
    _Atomic uint32_t state;
    _Atomic uint32_t generation;            /* bumped at each (re)start */
    uint32_t         pad;
    /* counters the worker updates (never reset across restarts of the index) */
    _Atomic uint64_t requests;
    _Atomic uint64_t bytes_in, bytes_out;
    _Atomic uint64_t handoffs_sent, handoffs_received, handoffs_failed;
    _Atomic uint64_t errors[40];             /* by code, fy_error_codes order */
    _Atomic uint64_t agent_connects;
    _Atomic uint64_t clients;                /* gauge */
    _Atomic uint32_t agents;                 /* gauge: agent connections it holds */
    uint32_t         pad2;
    _Atomic uint64_t cluster[8];             /* by enum fy_cluster_counter (worker/cluster.h) */
} fy_shm_worker_t;

typedef struct fy_shm_hdr_s {
    uint32_t          magic;
    uint32_t          version;
    uint32_t          capacity;              /* slots, a power of two */
    uint32_t          max_tunnels;
    uint32_t          nworkers;
    uint32_t          used;                  /* master's bookkeeping */
    uint32_t          tombstones;
    _Atomic uint32_t  epoch;                 /* odd while the master rebuilds the table (slots move) */
    _Atomic uint64_t  worker_restarts;
    _Atomic uint64_t  reloads;
    /* Masters only: during a binary upgrade two masters write the table;
     * a robust process-shared mutex serializes them. Workers never take it. */
    pthread_mutex_t   writer;
    fy_shm_worker_t   workers[FY_SHM_MAX_WORKERS];
    /* fy_shm_slot_t slots[capacity] follow */
} fy_shm_hdr_t;

_Static_assert(sizeof(fy_shm_slot_t) % 8 == 0, "slots stay 8-byte aligned");
_Static_assert(sizeof(fy_shm_hdr_t) % 8 == 0, "slots start 8-byte aligned");

#endif
