"""Runs the application under uvicorn. SIGTERM (or Ctrl-C) drains: new requests get 503 at once, the
listening socket closes, requests in flight (streams included) run to their end, then the process exits."""

from __future__ import annotations

import logging
import signal
from typing import Any

log = logging.getLogger(__name__)


def run_server(app: Any, host: str, port: int, drain_timeout_s: float) -> None:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not app.state.draining:
                log.info("slimtune serve: draining (finishing requests in flight, refusing new ones)")
            app.state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=drain_timeout_s,
        lifespan="off",
    )
    server = DrainingServer(config)
    # uvicorn raises the signal it caught again once it has drained, under the handlers it found: these end
    # nothing, so the process exits 0 after a drain instead of dying of the signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
