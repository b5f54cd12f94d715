/*
 * cmd.h: ferryd's one-shot subcommands (SPEC.md "ferryd"), run instead of
 * the relay when argv[1] names them:
 *
 *   ferryd keygen -o FILE [--force]
 *   ferryd token --tunnel PATTERN [--expires 30d] [-c FILE] [--key FILE]
 *   ferryd token --static --tunnel PATTERN
 *   ferryd hash-password
 *
 * Each takes argc/argv starting at the subcommand's name, prints its result
 * on stdout and everything else on stderr, and returns the exit status
 * (0 or 1). Secrets are wiped (sodium_memzero) before returning.
 */
#ifndef FY_CMD_H
#define FY_CMD_H

#include "fy.h"

/* Write a new Ed25519 relay key (mode 0600; an existing file is kept unless --force). */
int fy_cmd_keygen(int argc, char **argv);

/* Print a new agent token alone on stdout: signed with auth.key, or --static. */
int fy_cmd_token(int argc, char **argv);

/* Read a password on stdin, print its Argon2id hash (libsodium INTERACTIVE limits). */
int fy_cmd_hash_password(int argc, char **argv);

#endif
