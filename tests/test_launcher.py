"""`roomd cluster`: a broker and nodes in one terminal, and Ctrl-C stops them all cleanly."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import attrs
import trio

from tests.cluster_support import Proc, free_ports


async def test_roomd_cluster_runs_every_process_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    front, back, port_a, port_b = free_ports(4)
    config = tmp_path / "cluster.toml"
    config.write_text(
        "[auth]\ndev = true\n"
        f'[broker]\nfrontend = "tcp://127.0.0.1:{front}"\nbackend = "tcp://127.0.0.1:{back}"\n'
        "stats_interval = 0\n"
        f'[cluster]\nmode = "broker"\nbroker_frontend = "tcp://127.0.0.1:{front}"\n'
        f'broker_backend = "tcp://127.0.0.1:{back}"\nheartbeat_interval = 0.2\n'
        f'keys = "{tmp_path / "keys"}"\n'
        f'[[cluster.nodes]]\nname = "nodeA"\nport = {port_a}\n'
        f'[[cluster.nodes]]\nname = "nodeB"\nport = {port_b}\n'
    )
    launcher = Proc(
        "launcher",
        [sys.executable, "-m", "roomd.cli", "cluster", "--config", str(config), "--no-color"],
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await launcher.start(nursery)
            await launcher.wait_for(r"^nodeA +\| .*node nodeB is up")
            await launcher.wait_for(r"^nodeB +\| .*node nodeA is up")
            assert launcher.process is not None
            launcher.process.send_signal(signal.SIGINT)
            assert await launcher.process.wait() == 0
    output = "\n".join(launcher.lines)
    # A first run made the keys of the cluster's processes; a second one finds them.
    assert f"made CurveZMQ keys for broker, nodeA, nodeB in {tmp_path / 'keys'}" in output
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        f"{name}.{kind}" for name in ("broker", "nodeA", "nodeB") for kind in ("key", "key_secret")
    ]
    for name in ("broker", "nodeA", "nodeB"):
        assert f"{name} exited with status 0" in output, output
    # The nodes stopped before the broker: each one's goodbye reached the other (unless that
    # one had already stopped listening).
    assert "node nodeA left" in output or "node nodeB left" in output, output
    assert "did not stop" not in output


def test_the_plan_of_a_broker_pair_binds_what_each_entry_says(tmp_path: Path) -> None:
    from roomd._config import config_from_dict
    from roomd._launcher import ensure_keys, plan

    config = config_from_dict(
        {
            "cluster": {
                "mode": "broker",
                "keys": str(tmp_path / "keys"),
                "brokers": [
                    {"name": "b1", "frontend": "tcp://10.0.0.1:5555", "backend": "tcp://h:5556"},
                    {
                        "name": "b2",
                        "frontend": "tcp://10.0.0.2:5555",
                        "backend": "tcp://10.0.0.2:5556",
                        "frontend_bind": "tcp://0.0.0.0:5555",
                        "backend_bind": "tcp://0.0.0.0:5556",
                    },
                ],
                "nodes": [{"name": "nodeA", "port": 9000}],
            }
        }
    )
    assert ensure_keys(config) == ["b1", "b2", "nodeA"]
    assert ensure_keys(config) == []  # they are there now
    children = plan(config, "c.toml")
    assert [c.name for c in children] == ["b1", "b2", "nodeA"]
    b1, b2 = (" ".join(c.argv) for c in children[:2])
    assert f"--keys {tmp_path / 'keys'} --name b1 --frontend tcp://10.0.0.1:5555" in b1
    assert "--name b2 --frontend tcp://0.0.0.0:5555 --backend tcp://0.0.0.0:5556" in b2
    insecure = plan(attrs.evolve(config, cluster=attrs.evolve(config.cluster, insecure=True)), "c")
    assert "--insecure" in insecure[0].argv
