"""The NoCloud seed (config drive) of a VM: an ISO 9660 image labelled ``cidata``.

It holds three files, the way cloud-init's NoCloud datasource reads them:

- ``meta-data``: ``instance-id`` (changes on reinstall), ``local-hostname``, ``public-keys``;
- ``vendor-data``: ``#cloud-config`` setting the passwords (``chpasswd.users``, plain text:
  the guest hashes them) and allowing password logins;
- ``user-data``: the spec's user data as given (``#cloud-config`` or a ``#!`` script).

The driver keeps the seed's content in ``seed.json`` (mode 0600) next to the ISO and
builds a new ISO from it when a password changes. The guest reads the seed at boot: a new
password applies at the next boot. (The project's test image honours the whole seed at
every boot; cloud-init runs ``chpasswd`` once per instance-id.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from altostack.drivers import tools
from altostack.drivers.errors import BackendFailure, InvalidSpec

ISO_TOOLS = ("genisoimage", "mkisofs", "xorrisofs")
LABEL = "cidata"
_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")


def guest_hostname(name: str) -> str:
    """A valid hostname from a VM name: lower case, [a-z0-9-], 1-63 characters."""
    label = _HOSTNAME_BAD.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or "vm"


def _yaml_quote(value: str, what: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise InvalidSpec(f"{what} must be a single line")
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class SeedContent:
    """What a VM's config drive says."""

    instance_id: str
    hostname: str
    passwords: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """(user, password) pairs, plain text."""
    ssh_keys: tuple[str, ...] = ()
    user_data: str | None = field(default=None, repr=False)

    def with_password(self, user: str, password: str) -> SeedContent:
        others = tuple((u, p) for u, p in self.passwords if u != user)
        return replace(self, passwords=(*others, (user, password)))

    def password_of(self, user: str) -> str | None:
        return dict(self.passwords).get(user)

    def files(self) -> dict[str, str]:
        """The seed's files and their text."""
        meta = [
            f"instance-id: {_yaml_quote(self.instance_id, 'instance id')}",
            f"local-hostname: {_yaml_quote(self.hostname, 'hostname')}",
        ]
        if self.ssh_keys:
            meta.append("public-keys:")
            meta += [f"  - {_yaml_quote(key, 'an SSH key')}" for key in self.ssh_keys]
        vendor = ["#cloud-config", "ssh_pwauth: true"]
        if self.passwords:
            vendor += ["chpasswd:", "  expire: false", "  users:"]
            for user, password in self.passwords:
                vendor += [
                    f"    - name: {user}",
                    f"      password: {_yaml_quote(password, 'a password')}",
                    "      type: text",
                ]
        return {
            "meta-data": "\n".join(meta) + "\n",
            "vendor-data": "\n".join(vendor) + "\n",
            "user-data": self.user_data if self.user_data is not None else "#cloud-config\n",
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "instance_id": self.instance_id,
                "hostname": self.hostname,
                "passwords": [list(p) for p in self.passwords],
                "ssh_keys": list(self.ssh_keys),
                "user_data": self.user_data,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SeedContent:
        data = json.loads(text)
        return cls(
            instance_id=data["instance_id"],
            hostname=data["hostname"],
            passwords=tuple((u, p) for u, p in data["passwords"]),
            ssh_keys=tuple(data["ssh_keys"]),
            user_data=data["user_data"],
        )


def iso_tool() -> str | None:
    for tool in ISO_TOOLS:
        path = shutil.which(tool)
        if path:
            return path
    return None


def _write_private(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def build_seed_iso(content: SeedContent, iso: Path) -> None:
    """Write ``content`` as a NoCloud ISO at ``iso`` (mode 0600, via a temporary name)."""
    tool = iso_tool()
    if tool is None:
        raise BackendFailure("no ISO tool found (genisoimage, mkisofs or xorrisofs)")
    files = content.files()
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=iso.parent) as tmp:
        tmpdir = Path(tmp)
        for name, text in files.items():
            _write_private(tmpdir / name, text)
        out = tmpdir / "seed.iso"
        argv = [tool, "-quiet", "-output", str(out), "-volid", LABEL, "-joliet", "-rock"]
        result = await tools.run([*argv, *(str(tmpdir / name) for name in files)], timeout=60)
        if result.returncode != 0:
            raise BackendFailure(f"{Path(tool).name} failed: {result.stderr}")
        os.chmod(out, 0o600)
        os.replace(out, iso)


def save_seed_json(content: SeedContent, path: Path) -> None:
    """Keep the seed's content (mode 0600, atomically) to rebuild the ISO from later."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_private(tmp, content.to_json())
    os.replace(tmp, path)


def read_seed(json_path: Path) -> SeedContent:
    return SeedContent.from_json(json_path.read_text())
