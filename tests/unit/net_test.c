/*
 * net_test.c: unit tests of common/net: formatting socket addresses (the
 * relay does it once per accepted connection, for logs and X-Forwarded-For).
 */
#include "tests/unit/unit.h"

#include "fy.h"
#include "net/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static void check(const char *text, int family, const char *want_ip, const char *want_addr)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char ip[FY_ADDRSTRLEN], addr[FY_ADDRSTRLEN];

    cr_assert_eq(fy_net_parse_addr(text, &ss, &len), FY_OK, "%s", text);
    cr_assert_eq(ss.ss_family, family);
    memset(ip, 'x', sizeof(ip));
    memset(addr, 'x', sizeof(addr));
    fy_net_format_ip((struct sockaddr *)&ss, ip);
    fy_net_format((struct sockaddr *)&ss, addr);
    cr_assert_str_eq(ip, want_ip);
    cr_assert_str_eq(addr, want_addr);
}

Test(net, format_ipv4)
{
    check("127.0.0.1:8080", AF_INET, "127.0.0.1", "127.0.0.1:8080");
    check("0.0.0.0:0", AF_INET, "0.0.0.0", "0.0.0.0:0");
    check("255.255.255.255:65535", AF_INET, "255.255.255.255", "255.255.255.255:65535");
    check("10.20.30.40:9", AF_INET, "10.20.30.40", "10.20.30.40:9");
    check("192.168.100.7:443", AF_INET, "192.168.100.7", "192.168.100.7:443");
}

Test(net, format_ipv4_every_octet)
{
    struct sockaddr_in sa;
    char ip[FY_ADDRSTRLEN], want[FY_ADDRSTRLEN];

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    for (unsigned v = 0; v < 256; v++) {
        sa.sin_addr.s_addr = htonl(v << 24 | (255 - v) << 16 | v << 8 | (v * 7 % 256));
        fy_net_format_ip((struct sockaddr *)&sa, ip);
        cr_assert_not_null(inet_ntop(AF_INET, &sa.sin_addr, want, sizeof(want)));
        cr_assert_str_eq(ip, want);
    }
}

Test(net, format_ipv6)
{
    check("[::1]:80", AF_INET6, "::1", "[::1]:80");
    check("[2001:db8::5]:8443", AF_INET6, "2001:db8::5", "[2001:db8::5]:8443");
}
