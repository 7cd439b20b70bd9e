"""Several machines on one: what the tests (and ``scripts/several_machines.py``) stand in
for them with.

- :func:`running`: a real PostgreSQL server, Debian's ``postgresql`` package's ``initdb``
  and ``pg_ctl``, a cluster in a temporary folder, on a free localhost port, with password
  authentication over TCP (so a wrong password is refused, as on a real host). Run as
  root, the server runs as the ``postgres`` user (PostgreSQL refuses root).
- :func:`as_other_host`: a command under another host name, in a UTS namespace of its
  own (a second host, as far as a process can tell by its host name).
- :func:`digits_in_files`: scikit-learn's digits as a TFDS dataset directory whose
  training split is stored in several files (what a multi-worker job shards by file).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "bnn"
SHARDS = 8  # training files of digits_in_files


@dataclass
class Server:
    port: int
    password: str

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """A fresh database on the server; its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER,
                             password=self.password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian keeps them off the PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def free_ports(n: int) -> list[int]:
    """``n`` distinct localhost ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextlib.contextmanager
def running() -> Iterator[Server]:
    """Start a server for the block; stop it and remove its files after. Raises
    ``RuntimeError`` with the reason where it cannot start."""
    bindir = binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian's postgresql package; "
                           ".ci/run installs it)")
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bnn-pg-"))
    try:
        if os.getuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no postgres user") from None
            os.chown(root, account.pw_uid, account.pw_gid)
            as_postgres = ["runuser", "-u", "postgres", "--"]
        password = secrets.token_urlsafe(12)
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        if as_postgres:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        data, (port,) = root / "data", free_ports(1)
        _run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", USER,
              f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
              "-E", "UTF8", "--no-sync"])
        _run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l",
              str(root / "server.log"), "-w", "-t", "60", "-o",
              f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        try:
            yield Server(port, password)
        finally:
            subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {done.stderr.strip()[-500:]}")


def as_other_host(cmd: list[str], name: str = "other-host") -> list[str]:
    """``cmd`` in a UTS namespace of its own, under the host name ``name``."""
    return ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh", *cmd]


def can_be_another_host() -> bool:
    done = subprocess.run(as_other_host(["hostname"]), capture_output=True, text=True,
                          check=False)
    return done.returncode == 0 and done.stdout.strip() == "other-host" != socket.gethostname()


def digits_in_files(root: Path, shards: int = SHARDS) -> Path:
    """scikit-learn's digits as a TFDS dataset directory written by hand: 1,500 training
    examples in ``shards`` TFRecord files, the other 297 as the test split in one."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 15).astype(np.uint8)[..., None]
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=10)})
    root.mkdir(parents=True)
    parts = {"train": np.array_split(np.arange(1500), shards),
             "test": [np.arange(1500, len(images))]}
    for split, chunks in parts.items():
        for i, chunk in enumerate(chunks):
            name = f"digits-{split}.tfrecord-{i:05d}-of-{len(chunks):05d}"
            with tf.io.TFRecordWriter(str(root / name)) as writer:
                for k in chunk:
                    writer.write(features.serialize_example(
                        {"image": images[k], "label": int(digits.target[k])}))
    tfds.folder_dataset.write_metadata(data_dir=str(root), features=features)
    return root
