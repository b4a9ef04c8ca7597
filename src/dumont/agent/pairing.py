"""Direct mode on the hosts: the pair key's forced command on the standby, and the primary's push.

The standby accepts the pair key only through ``receive <epoch>``: it runs ``rsync --server`` into that epoch's
staging area, with a destination and delta basis the standby chooses, and refuses everything else. Fencing moves
the epoch on, drops the key and kills receives still running, so a former primary can never write again.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import sys
from typing import Any

from . import cleanchan
from .common import Failure, Json, data_dir, incoming_dir, read_epoch, read_json, snapshot_path, write_atomic

PAIR_MARK = "dumont-pair="
RSYNC_FLAGS = set("lHogDtpRSrvcIxWzq.LsfCuie")
RUNNING: list[Any] = []  # rsync children, killed when the controller goes away


def authorized_keys_path() -> str:
    """The authorized_keys file this host's sshd reads."""
    return os.environ.get("DUMONT_AUTHORIZED_KEYS") or os.path.expanduser("~/.ssh/authorized_keys")


def agent_command() -> str:
    """How sshd should start this agent (the zip file we were started from)."""
    python = os.environ.get("DUMONT_PYTHON") or sys.executable or "python3"
    return f"{shlex.quote(python)} -S {shlex.quote(os.path.abspath(sys.argv[0]))}"  # -S: see clean_shell


def clean_shell() -> str:
    """The start of rsync's ``-e`` that drops a chatty login's output before the standby's rsync speaks."""
    python = os.environ.get("DUMONT_PYTHON") or sys.executable or "python3"
    # -S: the agent is stdlib-only, and a host's site hooks (.pth files) only add to every transfer's start.
    return f"'{python}' -S '{os.path.abspath(sys.argv[0])}' clean-ssh"


def authorize_pair(args: Json) -> Json:
    """Let the pair key push into this host's staging area for ``epoch`` only (a forced command)."""
    epoch = int(args["epoch"])
    key = " ".join(args["public_key"].split()[:2])
    command = f"{agent_command()} receive {epoch}".replace('"', '\\"')
    _rewrite_authorized_keys(args["pair"], f'command="{command}",restrict {key} {PAIR_MARK}{args["pair"]}')
    return {"epoch": epoch}


def revoke_pair(args: Json) -> Json:
    """Fence: stop accepting the pair key and kill every receive from an older epoch (or all, with ``all``)."""
    removed = _rewrite_authorized_keys(args["pair"], None)
    killed = _kill_receivers(older_than=read_epoch() + (1 if args.get("all") else 0))
    return {"removed": removed, "killed": killed}


def _rewrite_authorized_keys(pair: str, line: str | None) -> int:
    path = authorized_keys_path()
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    kept = [x for x in lines if not x.endswith(PAIR_MARK + pair)]
    removed = len(lines) - len(kept)
    if line is not None:
        kept.append(line)
    write_atomic(path, ("\n".join(kept) + "\n").encode(), 0o600)
    return removed


def _kill_receivers(older_than: int) -> int:
    """Kill this host's receives of an epoch below ``older_than``.

    Only those writing into this host's own data directory: another standby on the same machine (a pool's other
    pairs, the local cloud's other hosts) has receives of its own, with epochs of its own, that are none of ours.
    """
    killed = 0
    mine = os.fsencode(os.path.realpath(data_dir()))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        epoch = env.get(b"DUMONT_RECEIVE_EPOCH")
        if epoch is None or env.get(b"DUMONT_RECEIVE_DATA_DIR") != mine or int(epoch or b"0") >= older_than:
            continue
        try:
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
        except OSError:
            continue
    return killed


def install_pair_client(args: Json) -> Json:
    """Give a primary the pair key and an ssh_config that reaches the standby as ``dumont-standby``."""
    pair_dir = os.path.join(data_dir(), "pair")
    os.makedirs(pair_dir, mode=0o700, exist_ok=True)
    key_path = os.path.join(pair_dir, "pair_key")
    write_atomic(key_path, args["private_key"].encode(), 0o600)
    known = os.path.join(pair_dir, "known_hosts")
    write_atomic(known, f"dumont-standby {' '.join(args['standby_host_key'].split()[:2])}\n".encode())
    # The control socket must fit in 108 bytes, and hosts sharing /tmp (the local cloud) must not share it.
    control = f"/tmp/dumont-{hashlib.sha256(pair_dir.encode()).hexdigest()[:10]}-%C"  # noqa: S108 - a socket name
    options = [
        f"HostName {args['host']}", f"Port {int(args['port'])}", f"User {args['user']}",
        "HostKeyAlias dumont-standby", f'IdentityFile "{key_path}"', "IdentitiesOnly yes",
        f'UserKnownHostsFile "{known}"', "GlobalKnownHostsFile /dev/null", "StrictHostKeyChecking yes",
        "HostKeyAlgorithms ssh-ed25519", "BatchMode yes", "ConnectTimeout 10", "ServerAliveInterval 5",
        "ServerAliveCountMax 3", "ControlMaster auto", f'ControlPath "{control}"', "ControlPersist 60",
        "LogLevel ERROR", f"Ciphers {stream_ciphers()}",
    ]
    config = "Host dumont-standby\n" + "".join(f"  {o}\n" for o in options)
    write_atomic(os.path.join(pair_dir, "ssh_config"), config.encode(), 0o600)
    return {"ssh_config": os.path.join(pair_dir, "ssh_config")}


# Every OpenSSH since 6.5 knows all four; the first both ends know is used.
_AES_FIRST = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
_CHACHA_FIRST = "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr"


def stream_ciphers(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The pair stream's ciphers, fastest first: AES-GCM where the CPU has AES instructions (``aes`` on x86,
    ``aes`` among an ARM core's features), ChaCha20-Poly1305 elsewhere (OpenSSH's own default, fast in software).
    ``bench/ciphers.py`` measures both on this machine."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features") and "aes" in value.split():
                    return _AES_FIRST
    except OSError:
        pass
    return _CHACHA_FIRST


def _allowed_option(arg: str) -> bool:
    """Options a receiving rsync may get from the pair key: the client's flags, never a path of its choosing."""
    if arg in ("--numeric-ids", "--stats", "--ignore-times") or arg.startswith(
            ("--timeout=", "--bwlimit=", "--compress-choice=", "--zc=")):
        return True
    return arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) <= RSYNC_FLAGS


def receive_argv(original: list[str], epoch: int, base_seq: int | None) -> list[str]:
    """The ``rsync --server`` command to run for a pair-key push, or Failure if the request is not one.

    The destination and the delta basis are ours to choose: whatever paths the client asked for are ignored.
    """
    if len(original) < 4 or original[:2] != ["rsync", "--server"]:
        raise Failure("Refused", "only a staged rsync push is allowed with this key")
    options = []
    args = iter(original[2:])
    for arg in args:
        if arg == ".":
            break
        if arg == "--link-dest":
            next(args, None)  # the standby chooses the delta basis itself
        elif not arg.startswith("--link-dest="):
            if not _allowed_option(arg):
                raise Failure("Refused", f"rsync option {arg!r} is not allowed with the pair key")
            options.append(arg)
    else:
        raise Failure("Refused", "the rsync request names no destination")
    argv = ["rsync", "--server", *options]
    if base_seq is not None:
        argv.append("--link-dest=" + os.path.join(snapshot_path(int(base_seq)), "tree"))
    return [*argv, ".", os.path.join(incoming_dir(epoch), "tree") + "/"]


def receive(epoch: int) -> None:
    """Forced command of the pair key: run ``rsync --server`` into this epoch's staging area, nothing else."""
    try:
        if read_epoch() != epoch:
            raise Failure("Refused", f"this key belongs to epoch {epoch}, the standby is at {read_epoch()}")
        meta = read_json(os.path.join(incoming_dir(epoch), "stage.json"))
        if not isinstance(meta, dict):
            raise Failure("Refused", f"no pass is staged for epoch {epoch}")
        argv = receive_argv(shlex.split(os.environ.get("SSH_ORIGINAL_COMMAND", "")), epoch, meta.get("base_seq"))
    except Failure as failure:
        sys.stderr.write(f"dumont: refused: {failure.message}\n")
        sys.exit(3)
    os.environ["DUMONT_RECEIVE_EPOCH"] = str(epoch)  # lets a fence find and kill this receive...
    os.environ["DUMONT_RECEIVE_DATA_DIR"] = os.path.realpath(data_dir())  # ...of this standby, and only its own
    os.write(1, cleanchan.MARK)  # whatever the login shell printed before this is dropped by the sender
    os.execvp("rsync", argv)  # noqa: S606 - replaces this process with the validated receive


def install_host_certificate(args: Json) -> Json:
    """Make this host's sshd present a certificate of its own host key (signed by the pair's host CA).

    Only the certificate travels: the host keeps its own private key, and no key of the pair ever reaches it.
    sshd is told where the certificate is (``HostCertificate``) if its config does not say so yet, then reloads.
    """
    key = os.environ.get("DUMONT_SSHD_HOST_KEY") or "/etc/ssh/ssh_host_ed25519_key"
    cert = key + "-cert.pub"
    write_atomic(cert, (args["certificate"].strip() + "\n").encode(), 0o644)
    config = os.environ.get("DUMONT_SSHD_CONFIG") or "/etc/ssh/sshd_config"
    try:
        with open(config) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise Failure("ReloadFailed", f"could not read sshd's config {config}: {exc}") from exc
    wanted = {f"HostCertificate {cert}", f'HostCertificate "{cert}"'}
    if not wanted & {line.strip() for line in lines}:
        # Before any Match block: sshd takes HostCertificate only at the top level.
        at = next((n for n, line in enumerate(lines) if line.strip().lower().startswith("match ")), len(lines))
        lines.insert(at, f"HostCertificate {cert}")
        write_atomic(config, ("\n".join(lines) + "\n").encode(), 0o644)
    pidfile = os.environ.get("DUMONT_SSHD_PIDFILE") or "/run/sshd.pid"
    try:
        with open(pidfile) as handle:
            os.kill(int(handle.read().strip()), signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise Failure("ReloadFailed", f"could not ask sshd to reload its host certificate: {exc}") from exc
    return {"path": cert}
