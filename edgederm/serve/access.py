"""Who may use the clinic app when it listens beyond this machine.

On 127.0.0.1 (the default) only this machine can connect, and no code is
asked. On any other address, anyone on the clinic's network could, so the app
asks for an access code: generated on the first such start, printed once, and
stored only as a salted scrypt hash in DATA_DIR/access.json. After a correct
code the browser holds a session cookie (HttpOnly, SameSite=Strict), signed
with a key kept in the same file, valid for SESSION_HOURS; a restart keeps
sessions valid. Wrong codes are slowed down per client address.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from pathlib import Path

from edgederm.errors import EdgeDermError

ACCESS_FILE = "access.json"
COOKIE = "edgederm_session"
SESSION_HOURS = 12
CODE_GROUPS = 3             # 3 groups of 4 digits: 10^12 codes, easy to read out and type on a tablet
FAILURES_BEFORE_WAIT = 5    # wrong codes from one address before it must wait
WAIT_SECONDS = 30
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or 'localhost'; a host name that merely starts with
    "127." is not one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hash(code: str, salt: bytes) -> str:
    return hashlib.scrypt(code.encode(), salt=salt, **_SCRYPT).hex()


def _normalise(code: str) -> str:
    return "".join(ch for ch in code if ch.isdigit())


class AccessCode:
    """The hashed code and the session-signing key of one data folder."""

    def __init__(self, path: Path, salt: bytes, code_hash: str, key: bytes):
        self.path, self._salt, self._hash, self._key = path, salt, code_hash, key
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def load_or_create(cls, data_dir: Path, reset: bool = False) -> tuple["AccessCode", str | None]:
        """(the access code, the new plain code when one was just made, else None)."""
        path = Path(data_dir) / ACCESS_FILE
        if path.is_file() and not reset:
            try:
                saved = json.loads(path.read_text())
                return cls(path, bytes.fromhex(saved["salt"]), saved["hash"], bytes.fromhex(saved["key"])), None
            except (OSError, ValueError, KeyError) as e:
                raise EdgeDermError(f"{path}: unreadable access file ({e}); start with --reset-access-code "
                                    "to make a new code") from None
        code = "-".join(f"{secrets.randbelow(10 ** 4):04d}" for _ in range(CODE_GROUPS))
        salt, key = secrets.token_bytes(16), secrets.token_bytes(32)
        record = {"salt": salt.hex(), "hash": _hash(_normalise(code), salt), "key": key.hex(),
                  "scrypt": _SCRYPT, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        # owner-only from the first byte: the signing key is in it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=1))
        os.replace(tmp, path)
        return cls(path, salt, record["hash"], key), code

    # --- codes ----------------------------------------------------------------
    def try_code(self, code: str, client: str) -> tuple[bool, int]:
        """(accepted, seconds to wait before trying again). The attempt is counted before the code is checked,
        so parallel guesses cannot all slip under the limit; a right code takes its count back. Runs scrypt
        (tens of ms): call it off the event loop."""
        now = time.monotonic()
        with self._lock:
            for address in [a for a, times in self._failures.items() if now - times[-1] >= WAIT_SECONDS]:
                del self._failures[address]                     # forget addresses that stopped trying
            recent = [t for t in self._failures.get(client, []) if now - t < WAIT_SECONDS]
            if len(recent) >= FAILURES_BEFORE_WAIT:
                self._failures[client] = recent
                return False, max(1, int(WAIT_SECONDS - (now - recent[-FAILURES_BEFORE_WAIT])))
            self._failures[client] = recent + [now]
        ok = hmac.compare_digest(_hash(_normalise(code), self._salt), self._hash)
        if ok:
            with self._lock:
                times = self._failures.get(client, [])
                if now in times:
                    times.remove(now)
        return ok, 0

    # --- sessions -------------------------------------------------------------
    def new_session(self) -> str:
        issued = str(int(time.time()))
        nonce = secrets.token_hex(8)
        return f"{issued}.{nonce}.{self._sign(issued, nonce)}"

    def valid_session(self, cookie: str | None) -> bool:
        """Never raises: any cookie that is not one this key signed in the last SESSION_HOURS is False."""
        if not cookie or not cookie.isascii():          # compare_digest raises on non-ASCII str
            return False
        try:
            issued, nonce, signature = cookie.split(".")
            age = time.time() - int(issued)
        except ValueError:
            return False
        return 0 <= age < SESSION_HOURS * 3600 and hmac.compare_digest(signature, self._sign(issued, nonce))

    def _sign(self, issued: str, nonce: str) -> str:
        return hmac.new(self._key, f"{issued}.{nonce}".encode(), hashlib.sha256).hexdigest()
