/*
 * fuzz_tls_hello.c: libFuzzer target for the ClientHello SNI peek
 * (common/tls/hello.c): the first bytes any client sends to a listen_tls
 * socket, read before a handshake.
 *
 * Checks: a name found is 1..255 bytes of lower-case host name characters;
 * bytes after a complete hello change nothing; the parser says the same
 * of the same bytes twice (no hidden state).
 */
#include "fy.h"
#include "tls/hello.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char sni[FY_TLS_SNI_MAX + 1], again[FY_TLS_SNI_MAX + 1];
    const char *why = NULL;
    uint8_t *more;
    size_t i, n;
    int rc = fy_tls_hello_sni(data, size, sni, sizeof(sni), &why);

    CHECK(rc == FY_OK || rc == FY_AGAIN || rc == FY_ERR);
    CHECK(rc != FY_ERR || why != NULL);
    CHECK(fy_tls_hello_sni(data, size, again, sizeof(again), NULL) == rc);
    if (rc != FY_OK)
        return 0;
    CHECK(strcmp(sni, again) == 0);
    n = strlen(sni);
    CHECK(n <= FY_TLS_SNI_MAX);
    for (i = 0; i < n; i++)
        CHECK((sni[i] >= 'a' && sni[i] <= 'z') || (sni[i] >= '0' && sni[i] <= '9') || sni[i] == '-'
              || sni[i] == '.' || sni[i] == '_');
    if ((more = malloc(size + 7)) == NULL)
        return 0;
    memcpy(more, data, size);
    memcpy(more + size, "\x17\x03\x03\x00\x02xy", 7);   /* an application record after it */
    CHECK(fy_tls_hello_sni(more, size + 7, again, sizeof(again), NULL) == FY_OK && strcmp(sni, again) == 0);
    free(more);
    return 0;
}
