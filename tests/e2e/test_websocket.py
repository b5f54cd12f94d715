"""WebSocket upgrades through a tunnel: 101, then messages both ways
(python websockets client -> relay -> agent -> origin's echo server)."""

import asyncio
import os
import random

import pytest
import websockets

from harness import wait

# The whole module is in the valgrind subset (make test-valgrind).
pytestmark = pytest.mark.valgrind


@pytest.fixture
def ws_tunnel(tunnel_factory, origin):
    return tunnel_factory("wsapp", target=origin.ws_port)


async def _echo_session(uri, port, count=100):
    async with websockets.connect(uri, host="127.0.0.1", port=port, max_size=None,
                                  ping_interval=None, open_timeout=wait(15),
                                  close_timeout=wait(5), compression=None) as ws:
        rng = random.Random(7)
        for i in range(count):
            if i == count // 2:
                msg = os.urandom(1 << 20)  # one 1 MiB binary message
            elif i == count // 2 + 1:
                msg = "x" * (1 << 20)      # and a 1 MiB text message
            elif i % 2:
                msg = "text message %d %s" % (i, "é" * rng.randint(0, 300))
            else:
                msg = os.urandom(rng.randint(0, 70000))
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), wait(15))
            assert type(got) is type(msg), i
            assert got == msg, i
        await ws.close()
        return ws.close_code


def test_websocket_echo_by_host(ws_tunnel):
    uri = "ws://%s/ws" % ws_tunnel.host
    assert asyncio.run(_echo_session(uri, ws_tunnel.port)) == 1000


def test_websocket_echo_by_path(ws_tunnel):
    uri = "ws://127.0.0.1:%d/t/wsapp/ws" % ws_tunnel.port
    assert asyncio.run(_echo_session(uri, ws_tunnel.port, count=20)) == 1000


def test_websocket_pipelined_both_ways(ws_tunnel):
    async def run():
        async with websockets.connect("ws://%s/" % ws_tunnel.host, host="127.0.0.1", port=ws_tunnel.port,
                                      max_size=None, ping_interval=None, open_timeout=wait(15)) as ws:
            msgs = [os.urandom(1000 + i) for i in range(200)]

            async def sender():
                for m in msgs:
                    await ws.send(m)
            task = asyncio.ensure_future(sender())
            for m in msgs:
                assert await asyncio.wait_for(ws.recv(), wait(15)) == m
            await task
    asyncio.run(run())
