"""systemd's notify protocol for ``syncd run`` and ``syncd worker``: :class:`Notifier`
(READY=1, STATUS=, WATCHDOG=1, STOPPING=1 without ever blocking) and the watchdog's tick."""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger("syncd.daemon")


def watchdog_interval() -> float:
    """Half the watchdog's timeout (``$WATCHDOG_USEC``), at least 0.5 s; 30 s without one."""
    usec = os.environ.get("WATCHDOG_USEC")
    return max(int(usec) / 2e6, 0.5) if usec and usec.isdigit() else 30.0


class Notifier:
    """sd_notify(3) that never blocks: one non-blocking datagram per message to
    ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). A message that
    does not fit (nobody drains the socket) is dropped: a stalled supervisor must never
    stall syncd, nor keep SIGTERM from stopping it. Without NOTIFY_SOCKET it does nothing.
    """

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self.address: str | None = None
        self.sock: socket.socket | None = None
        self.dropped = 0
        self.lock = threading.Lock()  # the loop, the watchdog feeder and the workers send
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            log.warning(
                "NOTIFY_SOCKET %r is neither a socket path nor an abstract name (@name): "
                "systemd will not hear from syncd; check the unit's Type= and NotifyAccess=",
                address,
            )
            return
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.address = address

    def notify(self, message: str) -> bool:
        """Send ``message``; False when it was dropped."""
        with self.lock:
            return self._send(message)

    def _send(self, message: str) -> bool:
        if self.sock is None or self.address is None:
            return False
        try:
            self.sock.sendto(message.encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "the systemd notify socket is full (nobody reads it): dropping %r and "
                    "any later message that does not fit",
                    message,
                )
            return False
        except OSError as exc:  # the supervisor went away: syncd runs on
            log.debug("cannot notify systemd (%s): %s", message, exc)
            return False
        return True

    def close(self) -> None:
        with self.lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
