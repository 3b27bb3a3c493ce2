"""CURVE with an allowlist: keys on disk like SSH's, authorised viewers only, the agent's key checked, and
nothing readable on the wire. Real sockets on loopback; a tiny TCP proxy records what travels."""

from __future__ import annotations

import json
import select
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

from host_viewer.client import AgentClient, CommandFailed
from host_viewer.display import basic_lines
from host_viewer.security import (
    CurveClient, UntrustedAgent, client_security, create_or_load_keys as viewer_keys, known_agent_key, remember_agent,
)
from pi_agent.agent import Agent
from pi_agent.camera.sim import SimulatedCamera
from pi_agent.security import (
    CurveServer, InsecureListen, authorize, authorized_keys, create_or_load_keys as agent_keys, server_security,
)

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
JPEG_START = b"\xff\xd8\xff"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def secure_agent(tmp_path):
    """An agent with CURVE on loopback; `viewer_config` holds an authorised viewer key."""
    agent_config, viewer_config = tmp_path / "agent-side", tmp_path / "viewer-side"
    keys, _ = agent_keys(agent_config)
    vkeys, _ = viewer_keys(viewer_config)
    authorize(vkeys.public, name="laptop", config_dir=agent_config)
    security = CurveServer(keys)
    agent = Agent(SimulatedCamera(seed=5), "127.0.0.1:0", size=(320, 240), fps=30, security=security)
    agent.start()
    agent.viewer_config = viewer_config  # type: ignore[attr-defined]
    agent.agent_config = agent_config  # type: ignore[attr-defined]
    yield agent
    agent.stop()


def start_client(address: str, security, **kwargs) -> AgentClient:
    return AgentClient(address, security=security, **kwargs).start()


# ------------------------------------------------------------------------------------------ keys on disk
def test_keys_are_created_once_with_owner_only_permissions(tmp_path):
    keys, created = agent_keys(tmp_path)
    again, created_again = agent_keys(tmp_path)
    assert created and not created_again and again == keys
    assert mode(tmp_path / "agent") == 0o700 and mode(tmp_path / "agent" / "authorized_keys") == 0o700
    assert mode(tmp_path / "agent" / "agent.key_secret") == 0o600 and mode(tmp_path / "agent" / "agent.key") == 0o600
    assert zmq.auth.load_certificate(tmp_path / "agent" / "agent.key_secret") == (keys.public.encode(), keys.secret.encode())
    vkeys, _ = viewer_keys(tmp_path)
    assert mode(tmp_path / "viewer") == 0o700 and mode(tmp_path / "viewer" / "viewer.key_secret") == 0o600
    assert vkeys.public != keys.public


def test_a_secret_key_readable_by_others_is_refused(tmp_path):
    agent_keys(tmp_path)
    (tmp_path / "agent" / "agent.key_secret").chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        agent_keys(tmp_path)


def test_authorize_takes_a_key_or_a_file_and_refuses_garbage(tmp_path):
    vkeys, _ = viewer_keys(tmp_path / "v")
    key, path, added = authorize(str(tmp_path / "v" / "viewer" / "viewer.key"), config_dir=tmp_path)
    assert key == vkeys.public and added and mode(path) == 0o600
    assert authorize(vkeys.public, config_dir=tmp_path)[2] is False  # already there
    other = zmq.curve_keypair()[0].decode()
    assert authorize(f"  {other}\n", name="desk pc", config_dir=tmp_path)[1].name == "desk_pc.key"
    assert authorized_keys(tmp_path) == {vkeys.public: "viewer", other: "desk_pc"}
    for bad in ("hello", "x" * 39, "#" * 40, str(tmp_path / "missing.key")):
        with pytest.raises(ValueError, match="40 Z85 characters"):
            authorize(bad, config_dir=tmp_path)


def test_known_agents_by_address(tmp_path):
    key = zmq.curve_keypair()[0].decode()
    remember_agent("pi.local:5555", key, tmp_path)
    assert mode(tmp_path / "known_agents") == 0o600
    assert known_agent_key("pi.local:5555", tmp_path) == key and known_agent_key("pi.local:6000", tmp_path) is None
    newer = zmq.curve_keypair()[0].decode()
    remember_agent("pi.local:5555", newer, tmp_path)  # replaced, not duplicated
    assert known_agent_key("pi.local:5555", tmp_path) == newer
    assert sum(1 for line in (tmp_path / "known_agents").read_text().splitlines() if "pi.local" in line) == 1


# ------------------------------------------------------------------------------------------ policy
def test_the_agent_refuses_a_network_address_without_keys_unless_insecure(tmp_path):
    with pytest.raises(InsecureListen, match="pi-agent keys.*--insecure"):
        server_security("0.0.0.0:5555", config_dir=tmp_path)
    assert server_security("0.0.0.0:5555", insecure=True, config_dir=tmp_path) is None
    assert server_security("127.0.0.1:5555", config_dir=tmp_path) is None  # the quick start: plain on loopback
    with pytest.raises(InsecureListen):
        server_security("127.0.0.1:5555", secure=True, config_dir=tmp_path)
    agent_keys(tmp_path)
    assert isinstance(server_security("0.0.0.0:5555", config_dir=tmp_path), CurveServer)
    assert isinstance(server_security("127.0.0.1:5555", secure=True, config_dir=tmp_path), CurveServer)


def test_the_viewer_explains_how_to_trust_an_unknown_agent(tmp_path):
    with pytest.raises(UntrustedAgent) as info:
        client_security("192.0.2.7:5555", config_dir=tmp_path)
    sentence = str(info.value)
    assert "pi-agent keys" in sentence and "--agent-key" in sentence and "known_agents" in sentence
    assert client_security("127.0.0.1:5555", config_dir=tmp_path) is None
    assert client_security("192.0.2.7:5555", insecure=True, config_dir=tmp_path) is None
    key = zmq.curve_keypair()[0].decode()
    remember_agent("192.0.2.7:5555", key, tmp_path)
    assert client_security("192.0.2.7:5555", config_dir=tmp_path).server_key == key


# ------------------------------------------------------------------------------------------ on the wire
def test_an_authorised_viewer_streams_and_commands_encrypted(secure_agent):
    vkeys, _ = viewer_keys(secure_agent.viewer_config)
    client = start_client(f"127.0.0.1:{secure_agent.port}", CurveClient(secure_agent.server._security.keys.public, vkeys))
    try:
        client.wait_connected(10)
        frame = client.wait_frame(timeout=5)
        assert frame.decode().shape == (240, 320, 3)
        assert client.command("set_controls", {"controls": {"ExposureTime": 4000}})["controls"]["ExposureTime"] == 4000
        (session,) = secure_agent.server.sessions.values()
        assert session.user == vkeys.public  # ZAP's User-Id: who sent it, for audit
    finally:
        client.close()


def test_an_unauthorised_viewer_receives_no_frame_and_none_of_its_commands_runs(secure_agent, tmp_path):
    stranger_keys, _ = viewer_keys(tmp_path / "stranger")
    agent_key = secure_agent.server._security.keys.public
    stranger = start_client(f"127.0.0.1:{secure_agent.port}", CurveClient(agent_key, stranger_keys))
    try:
        wait_until(lambda: stranger.state == "refused", timeout=10, message="the stranger being refused")
        assert stranger.state_detail == "not authorised"
        assert f"pi-agent authorize '{stranger_keys.public}'" in stranger.state_hint
        assert "refused: not authorised" in basic_lines(_any_frame(), 0.0, 0.0, stranger.status_text)[0]
        from host_viewer.app import ViewerApp
        screen = ViewerApp(stranger).status_screen()  # what the window shows while refused (no frame yet)
        assert screen[:70].max() > 200 and screen[100:].max() == 0  # three lines of text at the top
        pending = stranger.send_command("set_controls", {"controls": {"ExposureTime": 1234}})
        with pytest.raises(CommandFailed) as info:
            pending.future.result(timeout=5)
        assert info.value.code == "not_connected"
        # Meanwhile an authorised viewer works, and the agent never heard from the stranger.
        vkeys, _ = viewer_keys(secure_agent.viewer_config)
        friend = start_client(f"127.0.0.1:{secure_agent.port}", CurveClient(agent_key, vkeys))
        try:
            before = friend.wait_frame(timeout=10).sequence
            friend.wait_frame(newer_than=before + 10, timeout=30)  # a deadline: a loaded machine renders slowly
            assert secure_agent.server.viewer_count == 1
        finally:
            friend.close()
        assert stranger.frames_received == 0 and stranger.welcome is None and stranger.bytes_received == 0
        assert secure_agent.camera.controls().get("ExposureTime") != 1234
        assert secure_agent.server._security.refused >= 1
    finally:
        stranger.close()


def test_revoking_a_viewer_takes_effect_at_its_next_connection(secure_agent):
    vkeys, _ = viewer_keys(secure_agent.viewer_config)
    (secure_agent.agent_config / "agent" / "authorized_keys" / "laptop.key").unlink()
    client = start_client(f"127.0.0.1:{secure_agent.port}", CurveClient(secure_agent.server._security.keys.public, vkeys))
    try:
        wait_until(lambda: client.state == "refused", timeout=10, message="refusal after revocation")
        authorize(vkeys.public, config_dir=secure_agent.agent_config)  # and back, without restarting the agent
        client.wait_connected(10)
    finally:
        client.close()


def test_a_viewer_expecting_another_agent_key_refuses_to_connect(secure_agent):
    vkeys, _ = viewer_keys(secure_agent.viewer_config)
    impostor_key = zmq.curve_keypair()[0].decode()  # what the viewer trusts; the agent holds another key
    client = start_client(f"127.0.0.1:{secure_agent.port}", CurveClient(impostor_key, vkeys))
    try:
        wait_until(lambda: client.state == "refused", timeout=10, message="refusing the wrong agent")
        assert client.state_detail == "agent key mismatch" and "pi-agent keys" in client.state_hint
        assert client.welcome is None and client.frames_received == 0 and client.bytes_received == 0
        assert secure_agent.server.viewer_count == 0
    finally:
        client.close()


def test_a_tunnel_whose_agent_is_down_is_named_in_the_hint(tmp_path):
    """A listener that accepts and hangs up (an SSH tunnel with nothing behind it) fails the handshake exactly
    as a wrong agent key does, so the hint must name both causes, for plain and encrypted viewers alike."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def hang_up():
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                listener.accept()[0].close()
            except (TimeoutError, socket.timeout):
                continue

    hanger = threading.Thread(target=hang_up, daemon=True)
    hanger.start()
    vkeys, _ = viewer_keys(tmp_path / "viewer")
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    clients = [start_client(address, None), start_client(address, CurveClient(zmq.curve_keypair()[0].decode(), vkeys))]
    try:
        for client, detail in zip(clients, ("handshake failed", "agent key mismatch")):
            wait_until(lambda: client.state == "refused", timeout=10, message="a refusal from the dead tunnel")
            assert client.state_detail == detail
            assert "pi-agent keys" in client.state_hint and "tunnel or proxy" in client.state_hint
            assert client.welcome is None and client.frames_received == 0
    finally:
        for client in clients:
            client.close()
        stop.set()
        hanger.join(timeout=5)
        listener.close()


def test_plain_and_encrypted_ends_do_not_mix(secure_agent, start_agent, tmp_path):
    plain_viewer = start_client(f"127.0.0.1:{secure_agent.port}", None)
    try:
        wait_until(lambda: plain_viewer.state == "refused", timeout=10, message="plain viewer refused")
        # libzmq reports the mechanism mismatch on some attempts and a bare handshake failure on others;
        # either way the viewer is refused and says how to trust an encrypted agent.
        assert plain_viewer.state_detail in ("the agent requires encryption", "handshake failed")
        assert "--agent-key" in plain_viewer.state_hint
        assert "requires encryption" in plain_viewer.state_detail + " " + plain_viewer.state_hint
    finally:
        plain_viewer.close()
    plain_agent = start_agent()
    vkeys, _ = viewer_keys(tmp_path)
    downgraded = start_client(f"127.0.0.1:{plain_agent.port}", CurveClient(zmq.curve_keypair()[0].decode(), vkeys))
    try:
        # ZeroMQ may first report a retry's vaguer failure (no detail); the mechanism mismatch follows.
        wait_until(lambda: downgraded.state_detail == "the agent is not encrypted", timeout=10,
                   message="refusing a plain-text agent")
        assert downgraded.state == "refused" and downgraded.frames_received == 0
    finally:
        downgraded.close()


def _any_frame():
    from host_viewer.client import ReceivedFrame
    return ReceivedFrame(0, 0, 0, 1, 1, b"", {}, {}, 0)


# ------------------------------------------------------------------------------------------ capture
class RecordingProxy:
    """A TCP proxy on loopback that forwards viewer ⇄ agent and records the agent → viewer bytes."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_viewer = bytearray()
        self.to_agent = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pairs: dict[socket.socket, tuple[socket.socket, bytearray]] = {}
        while not self._stop.is_set():
            readable, _, _ = select.select([self.listener, *pairs], [], [], 0.05)
            for s in readable:
                if s is self.listener:
                    viewer, _ = self.listener.accept()
                    agent = socket.create_connection(("127.0.0.1", self.target_port))
                    pairs[viewer] = (agent, self.to_agent)
                    pairs[agent] = (viewer, self.to_viewer)
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                other, record = pairs.get(s, (None, None))
                if other is None:
                    continue
                if not data:
                    for end in (s, other):
                        pairs.pop(end, None)
                        end.close()
                    continue
                record.extend(data)
                other.sendall(data)
        for s in pairs:
            s.close()
        self.listener.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _stream_through_proxy(agent_port: int, security) -> RecordingProxy:
    proxy = RecordingProxy(agent_port)
    client = start_client(f"127.0.0.1:{proxy.port}", security)
    try:
        client.wait_connected(10)
        first = client.wait_frame(timeout=10).sequence
        frame = client.wait_frame(newer_than=first + 10, timeout=10)
        assert frame.jpeg.startswith(JPEG_START)  # the viewer did receive JPEGs
    finally:
        client.close()
        proxy.close()
    return proxy


def test_the_encrypted_stream_carries_no_jpeg_marker_and_the_plain_one_does(secure_agent, start_agent):
    vkeys, _ = viewer_keys(secure_agent.viewer_config)
    encrypted = _stream_through_proxy(secure_agent.port, CurveClient(secure_agent.server._security.keys.public, vkeys))
    assert len(encrypted.to_viewer) > 100_000  # a dozen frames went through
    assert JPEG_START not in encrypted.to_viewer
    assert b"ExposureTime" not in encrypted.to_viewer and b"set_controls" not in encrypted.to_agent
    insecure_agent = start_agent()
    plain = _stream_through_proxy(insecure_agent.port, None)
    assert plain.to_viewer.count(JPEG_START) >= 10
    assert b"ExposureTime" in plain.to_viewer


# ------------------------------------------------------------------------------------------ the programs
def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_keys_authorize_and_an_encrypted_session(tmp_path):
    agent_dir, viewer_dir = str(tmp_path / "pi"), str(tmp_path / "laptop")
    refused = _run(["-m", "pi_agent.cli", "--camera", "sim", "--listen", "0.0.0.0:0", "--config-dir", agent_dir])
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0:0 without encryption" in refused.stderr
    agent_key = _run(["-m", "pi_agent.cli", "keys", "--config-dir", agent_dir]).stdout.strip()
    assert _run(["-m", "pi_agent.cli", "keys", "--config-dir", agent_dir]).stdout.strip() == agent_key  # shown again
    viewer_key = _run(["-m", "host_viewer.cli", "keys", "--config-dir", viewer_dir]).stdout.strip()
    out = _run(["-m", "pi_agent.cli", "authorize", viewer_key, "--config-dir", agent_dir])
    assert out.returncode == 0 and "authorised" in out.stdout
    bad = _run(["-m", "pi_agent.cli", "authorize", "not-a-key", "--config-dir", agent_dir])
    assert bad.returncode == 2 and "40 Z85 characters" in bad.stderr
    untrusted = _run(["-m", "host_viewer.cli", "192.0.2.7:5555", "--headless", "--config-dir", viewer_dir])
    assert untrusted.returncode == 2 and "--agent-key" in untrusted.stderr
    port = _free_port()
    agent = subprocess.Popen([sys.executable, "-m", "pi_agent.cli", "--camera", "sim", "--listen", f"127.0.0.1:{port}",
                              "--secure", "--size", "320x240", "--config-dir", agent_dir], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:  # the agent process is up (on a loaded machine its start takes seconds)
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 60, message="the agent listening")
        wrong = _run(["-m", "host_viewer.cli", f"127.0.0.1:{port}", "--headless", "--duration", "1",
                      "--connect-timeout", "30", "--config-dir", viewer_dir])  # plain text to an encrypted agent
        assert wrong.returncode == 1 and "requires encryption" in wrong.stderr
        assert _run(["-m", "host_viewer.cli", "trust", f"127.0.0.1:{port}", agent_key,
                     "--config-dir", viewer_dir]).returncode == 0
        good = _run(["-m", "host_viewer.cli", f"127.0.0.1:{port}", "--headless", "--frames", "11",
                     "--summary-json", "-", "--config-dir", viewer_dir])
        assert good.returncode == 0, good.stderr
        assert json.loads(good.stdout)["frames"] == 11
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# ------------------------------------------------------------------ StrictModes: an allowlist others can write
def _authorised_laptop(tmp_path) -> tuple[Path, str]:
    config = tmp_path / "agent-side"
    agent_keys(config)
    vkeys, _ = viewer_keys(tmp_path / "viewer-side")
    authorize(vkeys.public, name="laptop", config_dir=config)
    assert authorized_keys(config) == {vkeys.public: "laptop"}
    return config, vkeys.public


def test_a_key_in_a_world_writable_directory_is_refused_with_a_logged_reason(tmp_path, caplog):
    config, key = _authorised_laptop(tmp_path)
    keys_dir = config / "agent" / "authorized_keys"
    keys_dir.chmod(0o777)
    assert authorized_keys(config) == {}
    assert f"the directory {keys_dir} holding laptop.key is writable by everyone" in caplog.text
    keys_dir.chmod(0o700)
    assert authorized_keys(config) == {key: "laptop"}
    (config / "agent").chmod(0o757)  # a directory above it: anyone could swap authorized_keys itself
    assert authorized_keys(config) == {}
    assert f"the directory {config / 'agent'} is writable by everyone" in caplog.text


def test_a_symlinked_key_whose_target_is_world_writable_is_refused(tmp_path, caplog):
    config, key = _authorised_laptop(tmp_path)
    keys_dir = config / "agent" / "authorized_keys"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    target = elsewhere / "laptop.key"
    (keys_dir / "laptop.key").rename(target)
    (keys_dir / "laptop.key").symlink_to(target)
    assert authorized_keys(config) == {key: "laptop"}  # a symlink to a safe file is fine, as for sshd
    target.chmod(0o666)
    assert authorized_keys(config) == {}
    assert f"{target} (via the symlink {keys_dir / 'laptop.key'}) is writable by everyone" in caplog.text
    target.chmod(0o600)
    elsewhere.chmod(0o777)  # the target's directory: anyone could replace the file
    assert authorized_keys(config) == {}


def test_an_authorized_keys_symlink_to_a_world_writable_directory_is_refused(tmp_path, caplog):
    config, key = _authorised_laptop(tmp_path)
    keys_dir = config / "agent" / "authorized_keys"
    shared = tmp_path / "shared"
    keys_dir.rename(shared)
    keys_dir.symlink_to(shared)
    assert authorized_keys(config) == {key: "laptop"}
    shared.chmod(0o777)
    assert authorized_keys(config) == {}
    assert f"the directory {shared} holding laptop.key (via the symlink" in caplog.text
    # `pi-agent authorize` says so, and writes nothing.
    other = zmq.curve_keypair()[0].decode()
    out = _run(["-m", "pi_agent.cli", "authorize", other, "--config-dir", str(config)])
    assert out.returncode == 2 and "refused" in out.stderr and f"{shared}" in out.stderr and "StrictModes" in out.stderr
    assert sorted(p.name for p in shared.iterdir()) == ["laptop.key"]
    listing = _run(["-m", "pi_agent.cli", "keys", "--config-dir", str(config)])
    assert "REFUSED" in listing.stderr and "writable by everyone" in listing.stderr


def test_a_viewer_whose_key_file_became_unsafe_is_refused_at_the_handshake(secure_agent):
    keys_dir = secure_agent.agent_config / "agent" / "authorized_keys"
    vkeys, _ = viewer_keys(secure_agent.viewer_config)
    agent_key = secure_agent.server._security.keys.public
    keys_dir.chmod(0o777)
    client = start_client(f"127.0.0.1:{secure_agent.port}", CurveClient(agent_key, vkeys))
    try:
        wait_until(lambda: client.state == "refused", timeout=10, message="the refusal")
        assert client.frames_received == 0 and secure_agent.server.viewer_count == 0
        keys_dir.chmod(0o700)  # fixed: admitted at the next attempt, without restarting the agent
        client.wait_connected(15)
    finally:
        client.close()
