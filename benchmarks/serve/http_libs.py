"""Idle RSS of a one-route HTTP server in each candidate library (the door's own cost, without the model).

Each runs in a fresh interpreter, answers one GET on loopback, then its VmRSS is read. Run with an
interpreter that has all of them (a scratch venv: pip install starlette uvicorn fastapi aiohttp):

    /tmp/libvenv/bin/python benchmarks/serve/http_libs.py
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APPS = {
    "stdlib http.server": """
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')
ThreadingHTTPServer(('127.0.0.1', PORT), H).serve_forever()
""",
    "starlette + uvicorn": """
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
app = Starlette(routes=[Route('/', lambda r: PlainTextResponse('ok'))])
uvicorn.run(app, host='127.0.0.1', port=PORT, log_level='warning', lifespan='off')
""",
    "fastapi + uvicorn": """
import uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get('/')
def root(): return 'ok'
uvicorn.run(app, host='127.0.0.1', port=PORT, log_level='warning', lifespan='off')
""",
    "aiohttp": """
from aiohttp import web
app = web.Application()
async def root(r): return web.Response(text='ok')
app.router.add_get('/', root)
web.run_app(app, host='127.0.0.1', port=PORT, print=None)
""",
}


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> float:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return round(int(ln.split()[1]) / 1024, 1)
    return 0.0


def main() -> None:
    import importlib.util

    out = {}
    for name, src in APPS.items():
        mods = {"starlette + uvicorn": "starlette", "fastapi + uvicorn": "fastapi", "aiohttp": "aiohttp"}
        if name in mods and importlib.util.find_spec(mods[name]) is None:
            out[name] = None  # not installed in this interpreter
            continue
        p = port()
        proc = subprocess.Popen([sys.executable, "-c", src.replace("PORT", str(p))])
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{p}/", timeout=2).read()
                break
            except OSError:
                if time.time() - t0 > 120:
                    raise SystemExit(f"{name} did not start") from None
                time.sleep(0.2)
        time.sleep(0.5)
        out[name] = rss(proc.pid)
        proc.terminate()
        proc.wait(10)
    import platform

    print(json.dumps({"python": sys.version.split()[0], "machine": platform.machine(), "idle_rss_mb": out}, indent=1))


if __name__ == "__main__":
    main()
