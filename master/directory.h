/*
 * directory.h: the master's side of the cluster directory (README "Running
 * several nodes"): it writes `ferry:tunnel:{id} = "NODE ADVERTISE"` to Redis
 * for every tunnel this node holds, with a TTL (cluster.ttl), refreshes the
 * entries every ttl/3, and deletes an entry when the node loses the tunnel
 * (only while the entry is still this node's). Anything it misses (a
 * crash, Redis down at the wrong moment) expires within the TTL.
 */
#ifndef FY_DIRECTORY_H
#define FY_DIRECTORY_H

#include "master/master.h"

/* Connect (nothing when cluster: is off). FY_OK or FY_ERR. */
int fy_dir_start(master_t *m) FY_MUST_USE;
void fy_dir_stop(void);
/* In a forked worker: close the master's connection without a word. */
void fy_dir_child(void);
/* id gained its first owner on this node: claim it (newest holder wins). */
void fy_dir_up(const char *id);
/* id may have lost its last owner here: delete the entry if so and ours. */
void fy_dir_check(const char *id);
/* A worker died: note the ids it held before its sweep, check them after. */
void fy_dir_before_sweep(uint16_t worker);
void fy_dir_after_sweep(void);

#endif
