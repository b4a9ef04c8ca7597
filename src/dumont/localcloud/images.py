"""The images local hosts boot from: what a real Vast pytorch container or GCP debian-12 VM has, and lacks.

A host of the local cloud is this machine's sshd in a directory tree of its own. Left at that, it would be far
kinder than a real instance: this machine's rsync and python3 on the PATH, root welcome, any login name. An
:class:`Image` takes that kindness away, the unfriendly parts first (``research/real-instances.md``):

* ``vast-pytorch`` (``pytorch/pytorch:*-runtime|-devel`` on Vast.ai): no rsync; python3 only under
  ``/opt/conda/bin``, which an SSH session's PATH does not have; root is the only login; an interactive login is
  wrapped in tmux unless ``~/.no_auto_tmux`` exists; ``apt-get install`` works (as root).
* ``debian-12`` (Google's image): python3 but no rsync; no root login over SSH; each user of the ``ssh-keys``
  metadata is a login with passwordless ``sudo``; ``apt-get`` needs root.
* ``machine``: this machine as it is (the plain hosts tests build replication on; no emulator uses it).

How a host is kept from this machine's tools: where the local cloud may create a mount namespace (as root), the
host's sshd runs in one of its own, in which ``/usr/bin``, ``/usr/local/bin`` and ``/opt`` are the host's own
(``/usr/bin`` holds links to this machine's tools, minus what the image lacks), so a missing tool is missing at
its absolute path too. Elsewhere (an ordinary user) only the PATH of the host's sessions is restricted to those
links: ``/usr/bin/rsync`` stays reachable by its absolute path, which Dumont never uses. Login names come from a
``passwd`` file of the host's own (``libnss_wrapper``): every name maps to the current user's uid.

``apt-get install`` of a package in :data:`PACKAGES` links this machine's binaries into the host's ``/usr/bin``:
the tool appears for that host only, and stays across its restarts (its disk keeps it).
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dumont.errors import LocalCloudError

MACHINE_NAME: Final = "machine"
NSS_WRAPPER_PATHS: Final = ("/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
                            "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so", "/usr/lib64/libnss_wrapper.so",
                            "/usr/lib/libnss_wrapper.so")
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what sshd gives a session
# The Debian packages ``apt-get install`` can put on a host, and the tools each one brings.
PACKAGES: Final[dict[str, tuple[str, ...]]] = {
    "rsync": ("rsync",),
    "tmux": ("tmux",),
    "python3": ("python3", "python3.11"),
    "python3-minimal": ("python3", "python3.11"),
    "curl": ("curl",),
    "ca-certificates": (),
    "openssh-client": ("ssh", "scp", "ssh-keygen", "ssh-keyscan"),
}
_PYTHON_TOOLS: Final = ("python*", "pydoc*", "pip*", "2to3*", "*-python3*", "pygettext3*")


@dataclass(frozen=True)
class Image:
    """What a host booted from this image has on its disk and lets in."""

    name: str
    summary: str
    default_user: str | None  # the login of a new instance (None: the current user, as on this machine)
    root_login: bool = True
    absent: tuple[str, ...] = ()  # glob patterns of /usr/bin names the image does not have
    python_prefix: str | None = None  # python3 lives only at <prefix>/bin/python3
    auto_tmux: bool = False
    sudo: bool = False  # every login user may sudo without a password

    @property
    def is_machine(self) -> bool:
        """This machine as it is: no restrictions (plain test hosts)."""
        return self.name == MACHINE_NAME

    def lacks(self, tool: str) -> bool:
        """Whether ``tool`` (a name in /usr/bin) is missing from this image."""
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.absent)


MACHINE: Final = Image(MACHINE_NAME, "this machine's tools, the current user's account", None)
VAST_PYTORCH: Final = Image(
    "vast-pytorch", "pytorch/pytorch runtime or devel image on a Vast.ai host", "root",
    absent=("rsync", *_PYTHON_TOOLS), python_prefix="/opt/conda", auto_tmux=True)
DEBIAN_12: Final = Image(
    "debian-12", "Google's debian-12 image on a Compute Engine VM", None, root_login=False,
    absent=("rsync", "tmux"), sudo=True)
IMAGES: Final = {image.name: image for image in (MACHINE, VAST_PYTORCH, DEBIAN_12)}


def image_named(name: str) -> Image:
    """The image called ``name``."""
    try:
        return IMAGES[name]
    except KeyError:
        raise LocalCloudError(f"the local cloud has no image {name!r}",
                              hint=f"use one of: {', '.join(sorted(IMAGES))}") from None


def nss_wrapper() -> str:
    """The libnss_wrapper library that gives a host its own users, or raise with what to install."""
    found = next((p for p in NSS_WRAPPER_PATHS if Path(p).exists()), None)
    if found is None:
        raise LocalCloudError("libnss_wrapper is not installed: the local cloud's Vast and GCP hosts need it for "
                              "their own login users", hint="install libnss-wrapper (make deps does it on Debian)")
    return found


LOGIN_BANNER_ENV: Final = "DUMONT_LOCAL_LOGIN_BANNER"  # text every login shell prints, even for ``ssh host cmd``
NO_NAMESPACE_ENV: Final = "DUMONT_LOCAL_NO_NAMESPACE"  # "1": restrict only the PATH, as for an ordinary user


def can_use_namespace() -> bool:
    """Whether hosts can get a mount namespace of their own (root with ``unshare``, unless turned off)."""
    if os.environ.get(NO_NAMESPACE_ENV) == "1":
        return False
    return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("mount") is not None


# ---------------------------------------------------------------------------------------------- host files


@dataclass(frozen=True)
class HostFiles:
    """Where an image host keeps what makes it that image (all under its root)."""

    root: Path
    users: dict[str, Path] = field(default_factory=dict)  # login user -> home

    @property
    def passwd(self) -> Path:
        """The host's own users, read by libnss_wrapper."""
        return self.root / "etc" / "passwd"

    @property
    def group(self) -> Path:
        """The host's own groups."""
        return self.root / "etc" / "group"

    @property
    def bin_dir(self) -> Path:
        """The host's /usr/bin: links to this machine's tools, minus what the image lacks, plus its shims."""
        return self.root / "usr" / "bin"

    @property
    def machine_bin(self) -> Path:
        """Inside the host's namespace, this machine's real /usr/bin is mounted here."""
        return self.root / ".machine" / "usr-bin"

    @property
    def boot_script(self) -> Path:
        """The script the host runs as root at every boot (Vast onstart, GCP startup-script)."""
        return self.root / "etc" / "boot.sh"

    @property
    def boot_log(self) -> Path:
        """What the boot script printed."""
        return self.root / "var" / "log" / "boot.log"

    @property
    def init(self) -> Path:
        """The host's init: mounts, boot script, then sshd."""
        return self.root / "sbin" / "init"

    @property
    def installed(self) -> Path:
        """Packages installed with apt-get, one per line."""
        return self.root / "var" / "lib" / "dpkg" / "dumont-installed"

    def home(self, user: str) -> Path:
        """A login user's home on the host."""
        return self.root / "root" if user == "root" else self.root / "home" / user


def lay_out(root: Path) -> None:
    """Create the directories every image host has."""
    for sub in ("etc", "root", "home", "usr/bin", "usr/local/bin", "opt", ".machine/usr-bin", "sbin",
                "var/log", "var/lib/dpkg", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o755)


def write_users(files: HostFiles, image: Image, users: dict[str, list[str]], banner: str = "") -> None:
    """Write the host's passwd/group and each login user's home and authorized keys (as a guest agent does)."""
    uid, gid = os.getuid(), os.getgid()
    names = dict(users)
    names.setdefault("root", [])  # root exists on every image; whether it may log in is sshd's business
    lines = [f"{name}:x:{uid}:{gid}:{name}:{files.home(name)}:/bin/bash" for name in sorted(names)]
    lines.append(f"sshd:x:{_sshd_uid()}:65534::/run/sshd:/usr/sbin/nologin")
    _write(files.passwd, "\n".join(lines) + "\n")
    group = _group_name(gid)
    _write(files.group, f"{group}:x:{gid}:{','.join(sorted(names))}\nnogroup:x:65534:\n")
    for name, keys in names.items():
        home = files.home(name)
        (home / ".ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
        _replace_managed_keys(home / ".ssh" / "authorized_keys", keys)
        write_shell_files(home, image, banner)


def _replace_managed_keys(keys_file: Path, keys: list[str]) -> None:
    # Lines a program on the host added (a forced-command key) survive a metadata change, as Google's guest agent
    # keeps the lines it did not write (research/real-instances.md S4); it remembers its own in a side file.
    managed = keys_file.with_name(".managed_keys")
    ours = set(managed.read_text().splitlines()) if managed.exists() else set()
    current = keys_file.read_text().splitlines() if keys_file.exists() else []
    wanted = [k.strip() for k in keys if k.strip()]
    kept = [line for line in current if line not in ours and line not in wanted]
    _write(keys_file, "".join(f"{line}\n" for line in [*wanted, *kept]), 0o600)
    _write(managed, "".join(f"{line}\n" for line in wanted), 0o600)


def login_banner() -> str:
    """The default login banner of a new pool (``$DUMONT_LOCAL_LOGIN_BANNER``; empty: nothing)."""
    return os.environ.get(LOGIN_BANNER_ENV, "")


def write_shell_files(home: Path, image: Image, banner: str = "") -> None:
    """A login user's ``~/.bashrc``: the login banner, if any, and Vast's automatic tmux."""
    bashrc = ""
    if banner:
        # A chatty ~/.bashrc, as people have: Debian's bash reads it even for `ssh host cmd`, so the banner lands
        # on stdout ahead of whatever the command prints (hostile-review.md #4).
        bashrc += "".join(f"printf '%s\\n' {shlex.quote(line)}\n" for line in banner.splitlines())
    if image.auto_tmux:
        # Vast: "when you connect via SSH you will by default be placed into a tmux session"; `touch
        # ~/.no_auto_tmux` turns it off (docs: guides/instances/connect/ssh). Only logins with a terminal.
        bashrc += (
            '# Vast.ai: an interactive SSH login starts in tmux unless ~/.no_auto_tmux exists.\n'
            'if [ -t 0 ] && [ -n "${SSH_TTY:-}" ] && [ -z "${TMUX:-}" ] && [ ! -e "$HOME/.no_auto_tmux" ]; then\n'
            '  exec tmux new-session -A -s ssh_tmux\n'
            'fi\n'
        )
    if not bashrc:
        return
    _write(home / ".bashrc", bashrc, 0o644)
    _write(home / ".profile", '[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n', 0o644)


def populate_bin(files: HostFiles, image: Image, *, namespace: bool) -> None:
    """(Re)build the host's /usr/bin: links to this machine's tools the image has, installed packages, shims."""
    target = files.machine_bin if namespace else Path("/usr/bin")
    installed = set(files.installed.read_text().split()) if files.installed.exists() else set()
    extra = {tool for package in installed for tool in PACKAGES.get(package, ())}
    for entry in os.scandir(files.bin_dir):
        os.unlink(entry.path)
    for entry in os.scandir("/usr/bin"):
        if image.lacks(entry.name) and entry.name not in extra:
            continue
        os.symlink(target / entry.name, files.bin_dir / entry.name)
    if image.python_prefix is not None and "python3" not in extra:
        _link_python(files, image.python_prefix, target)
    (files.root / "etc" / "machine-bin").write_text(f"{target}\n")
    _write(files.bin_dir / "apt-get", apt_get_script(files), 0o755)
    if image.sudo:
        _write(files.bin_dir / "sudo", sudo_script(files), 0o755)


def _link_python(files: HostFiles, prefix: str, target: Path) -> None:
    real = Path(os.path.realpath("/usr/bin/python3"))
    bin_dir = files.root / prefix.lstrip("/") / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python", real.name):
        link = bin_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target / real.name, link)


def apt_get_script(files: HostFiles) -> str:
    """The host's apt-get: ``update`` and ``install`` of :data:`PACKAGES`, as root only."""
    cases = "\n".join(f"    {name}) echo {shlex.quote(' '.join(tools))} ;;" for name, tools in PACKAGES.items())
    root, bin_dir, installed = (shlex.quote(str(p)) for p in (files.root, files.bin_dir, files.installed))
    return f"""#!/bin/sh
# apt-get of a local-cloud host: installs this host's own copy of a few packages (links to this machine's
# binaries in the host's /usr/bin), so the tool appears on this host only.
tools_of() {{
  case "$1" in
{cases}
    *) return 1 ;;
  esac
}}
machine_bin=$(cat {root}/etc/machine-bin)
command=""; packages=""
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    *) if [ -z "$command" ]; then command=$arg; else packages="$packages $arg"; fi ;;
  esac
done
if [ "${{USER:-}}" != root ]; then
  echo "E: Could not open lock file /var/lib/dpkg/lock-frontend - open (13: Permission denied)" >&2
  echo "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), are you root?" >&2
  exit 100
fi
case "$command" in
  update) echo "Reading package lists... Done"; exit 0 ;;
  install) ;;
  *) echo "E: Invalid operation ${{command:-(none)}}" >&2; exit 100 ;;
esac
for package in $packages; do
  if ! tools_of "$package" >/dev/null; then echo "E: Unable to locate package $package" >&2; exit 100; fi
done
for package in $packages; do
  for tool in $(tools_of "$package"); do
    [ -e "$machine_bin/$tool" ] && ln -sf "$machine_bin/$tool" {bin_dir}/"$tool"
  done
  grep -qx "$package" {installed} 2>/dev/null || echo "$package" >> {installed}
  echo "Setting up $package ..."
done
"""


def sudo_script(files: HostFiles) -> str:
    """The host's sudo: every login user may run anything as root, without a password (Google's images)."""
    home = shlex.quote(str(files.home("root")))
    return f"""#!/bin/sh
# sudo of a local-cloud GCP host: metadata users are passwordless sudoers, as Google's guest agent makes them.
while [ $# -gt 0 ]; do
  case "$1" in
    -n|-E|-H|-S|--non-interactive|--preserve-env) shift ;;
    -u) [ "${{2:-}}" = root ] || {{ echo "sudo: only -u root is supported here" >&2; exit 1; }}; shift 2 ;;
    --) shift; break ;;
    -*) echo "sudo: option $1 is not supported by the local cloud" >&2; exit 1 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || {{ echo "usage: sudo command" >&2; exit 1; }}
SUDO_USER=${{USER:-}}; USER=root; LOGNAME=root; HOME={home}
export SUDO_USER USER LOGNAME HOME
exec "$@"
"""


def init_script(files: HostFiles, *, sshd: str, sshd_config: Path, namespace: bool, env: dict[str, str]) -> str:
    """The host's init: its own /usr/bin, /usr/local/bin and /opt (in its namespace), the boot script, sshd."""
    q = shlex.quote
    root = q(str(files.root))
    mounts = ""
    if namespace:
        mounts = (f"mount --bind /usr/bin {q(str(files.machine_bin))}\n"
                  f"mount --bind {q(str(files.bin_dir))} /usr/bin\n"
                  f"mount --bind {root}/usr/local/bin /usr/local/bin\n"
                  f"mount --bind {root}/opt /opt\n")
    exports = " ".join(f"{k}={q(v)}" for k, v in env.items())
    return f"""#!/bin/sh
# Init of a local-cloud host: what the machine does at boot, before its sshd answers.
set -eu
{mounts}if [ -f {q(str(files.boot_script))} ]; then
  (
    unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    export {exports} HOME={q(str(files.home("root")))} USER=root LOGNAME=root
    cd "$HOME"
    exec /bin/sh {q(str(files.boot_script))}
  ) >>{q(str(files.boot_log))} 2>&1 </dev/null &
fi
exec {q(sshd)} -D -e -f {q(str(sshd_config))}
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _sshd_uid() -> int:
    # sshd drops privileges to this user before authentication; it must exist in the host's passwd.
    for name in ("sshd", "nobody"):
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
    return 65534


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "users"
