/*
 * unit.h: included by every Criterion unit test. Criterion pulls OpenSSL 3
 * in through libgit2, so the process holds two libcryptos; this check fails
 * the run at start if ours is not the BoringSSL the code is written for.
 */
#ifndef FY_UNIT_H
#define FY_UNIT_H

#include <criterion/criterion.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((constructor)) static void fy_unit_check_boringssl(void)
{
    if (strstr(OpenSSL_version(OPENSSL_VERSION), "BoringSSL") == NULL) {
        fprintf(stderr, "unit: linked against %s, not BoringSSL\n", OpenSSL_version(OPENSSL_VERSION));
        exit(2);
    }
}

#endif
