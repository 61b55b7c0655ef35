"""Serving the web UI: hypercorn (an asyncio HTTP server) over HTTPS with the device's own
certificate, made at first start, and a plain-HTTP listener that only redirects to HTTPS."""

import asyncio
import logging
import re
import ssl
import threading
import urllib.parse
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

from hypercorn.app_wrappers import WSGIWrapper
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config
from werkzeug.wsgi import FileWrapper

from appliance.config import load_config
from appliance.keys import certificate_fingerprint
from web.certificate import CRL_NAME, TLS_DIR, ensure_certificate, to_trust

log = logging.getLogger(__name__)

RENEW_CHECK_S = 6 * 3600     # how often the server certificate's end and names are looked at
# The server offers no wsgi.file_wrapper, so send_file would read 8 KB at a time, each piece a trip
# from a worker thread through the event loop. Pieces of 512 KB make the most of it (bench/web:
# larger ones only grow the memory used).
SEND_BLOCK = 512 * 1024
HANDSHAKE_S = 10            # a TLS handshake not done by then is dropped
READ_S = 10                 # a client silent this long mid-request is dropped
MAX_HEADER_BYTES = 16 * 1024
ANONYMOUS_BODY = 64 * 1024  # the largest body accepted from a request without credentials (a login form is < 1 KB)
FORM_OVERHEAD = 64 * 1024   # multipart boundaries and the other fields around an upload


HOST_PATTERN = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def redirect_app(https_port: int, hostname: str):
    """A WSGI app that sends every request to the same path over HTTPS: on the host the browser
    asked for when it is a plain name or address, else on `hostname`."""
    def app(environ, start_response):
        asked = environ.get("HTTP_HOST", "")
        asked = asked[:asked.index("]") + 1] if asked.startswith("[") and "]" in asked else asked.split(":")[0]
        host = asked if HOST_PATTERN.fullmatch(asked) else hostname
        port = "" if https_port == 443 else f":{https_port}"
        # The path is decoded by the server: quote it again, so no CR/LF or space reaches the header.
        path = urllib.parse.quote(environ.get("PATH_INFO", "/"), safe="/%:@!$&'()*+,;=-._~")
        query = urllib.parse.quote(environ.get("QUERY_STRING", ""), safe="/%:@!$&'()*+,;=-._~?")
        start_response("301 Moved Permanently", [("Location", f"https://{host}{port}{path}{'?' + query if query else ''}"),
                                                 ("Content-Length", "0")])
        return [b""]
    return app


def with_file_wrapper(app):
    """`app` given a `wsgi.file_wrapper` that sends files in pieces of at least SEND_BLOCK bytes."""
    def file_wrapper(file, block_size: int = SEND_BLOCK) -> FileWrapper:
        return FileWrapper(file, max(block_size, SEND_BLOCK))

    def wrapped(environ, start_response):
        environ["wsgi.file_wrapper"] = file_wrapper
        return app(environ, start_response)
    return wrapped


class ServerConfig(Config):
    """Hypercorn's settings with the TLS context hardened further (no renegotiation started by the
    client, a cheap way to make a server work; the server's cipher order) and kept, so a renewed
    certificate can be loaded into it while serving."""

    context: ssl.SSLContext | None = None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the HTTPS listener."""
        self.context = super().create_ssl_context()
        if self.context is not None:
            self.context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
        return self.context


class GatedWSGI(WSGIWrapper):
    """The WSGI app behind a gate that looks at the headers before the body is read: a body larger
    than the upload limit is refused at once (413), and one larger than a form is refused to a
    request that carries neither a session cookie nor an API token (401), so no one buffers
    megabytes on the appliance without at least claiming to be logged in."""

    def __init__(self, app, max_body: int, cookie_name: str):
        super().__init__(app, max_body)
        self.cookie_name = cookie_name.encode()

    async def handle_http(self, scope, receive, send, sync_spawn, call_soon):
        """Refuse what the headers already condemn; hand the rest to the app in a worker thread."""
        headers = dict(scope.get("headers", []))
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = -1
        credentials = b"authorization" in headers or self.cookie_name + b"=" in headers.get(b"cookie", b"")
        refusal = None
        if length < 0 or length > self.max_body_size:
            refusal = (413, b"The upload is too large.")
        elif (length > ANONYMOUS_BODY or b"chunked" in headers.get(b"transfer-encoding", b"")) and not credentials:
            refusal = (401, b"Log in first.")
        if refusal is None:
            gone = threading.Event()

            async def spawn(func, environ, send_app):
                # A long answer (a live call) ends when its client goes: the app looks at this.
                environ["callrec.gone"] = gone
                watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
                try:
                    return await sync_spawn(func, environ, send_app)
                finally:
                    watcher.cancel()
                    gone.set()      # also when the server, stopping, gives up on the request
            await super().handle_http(scope, receive, send, spawn, call_soon)
            return
        status, text = refusal
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"),
                                (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text, "more_body": False})

    def run_app(self, environ: dict, send) -> None:
        """Run the WSGI app in a worker thread and send its answer. Unlike hypercorn's own, this
        sends the head of an answer with an empty body too (a 304 to a browser's conditional
        request), and leaves the Date header to the server (werkzeug adds one to files it sends)."""
        head: dict = {}

        def start_response(status: str, headers: list, exc_info=None) -> None:
            head["status"] = int(status.split(" ", 1)[0])
            head["headers"] = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                               for name, value in headers if name.lower() != "date"]

        body = self.app(environ, start_response)
        sent_head = False
        try:
            for chunk in body:
                if not sent_head:
                    send({"type": "http.response.start", "status": head["status"], "headers": head["headers"]})
                    sent_head = True
                if chunk:
                    send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not sent_head:
                send({"type": "http.response.start", "status": head["status"], "headers": head["headers"]})
        finally:
            if hasattr(body, "close"):
                body.close()


async def _watch_disconnect(receive, gone: threading.Event) -> None:
    """Set `gone` when the client of a request whose body is read goes away (or the server stops)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def https_or_redirect(app, redirect):
    """One WSGI app for both listeners: requests over HTTPS go to `app`, plain HTTP to `redirect`
    but for the revocation list (fetched over HTTP, as revocation lists are)."""
    def dispatch(environ, start_response):
        plain_ok = environ.get("PATH_INFO") == f"/{CRL_NAME}" and environ.get("REQUEST_METHOD") == "GET"
        chosen = app if environ.get("wsgi.url_scheme") == "https" or plain_ok else redirect
        return chosen(environ, start_response)
    return dispatch


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class WebServer:
    """The HTTPS server and its HTTP redirect on one asyncio loop of their own (hypercorn): TLS
    handshakes and slow clients cost a coroutine, never a thread; the app runs in a pool of
    `web.threads` worker threads once a request's headers and body are in."""

    def __init__(self, config_path: Path):
        from web import MAX_UPLOAD_BYTES, SESSION_COOKIE, create_app
        from web.accounts import give_hash_memory_back

        give_hash_memory_back()

        config = load_config(config_path)
        web = config.web
        self.app = create_app(config_path)
        accounts = self.app.extensions["callrec"].accounts
        self.tls_folder = accounts.folder / TLS_DIR
        cert, key, _ = ensure_certificate(self.tls_folder, web.hostname)
        self.cert = cert
        self.web = web
        self.app.extensions["reload_certificate"] = self.reload_certificate
        self.config = ServerConfig()
        self.config.bind = [_address(web.bind, web.https_port)]
        self.config.insecure_bind = [_address(web.bind, web.http_port)] if web.http_port else []
        self.config.certfile, self.config.keyfile = str(cert), str(key)
        self.config.alpn_protocols = ["http/1.1"]
        self.config.ssl_handshake_timeout = HANDSHAKE_S
        self.config.read_timeout = READ_S
        self.config.h11_max_incomplete_size = MAX_HEADER_BYTES
        self.config.include_server_header = False
        self.config.graceful_timeout = 2
        self.config.accesslog = None
        self.config.errorlog = logging.getLogger("hypercorn.error")     # into the appliance's own log
        self.wsgi = GatedWSGI(https_or_redirect(with_file_wrapper(self.app), redirect_app(web.https_port, web.hostname)),
                              MAX_UPLOAD_BYTES + FORM_OVERHEAD, SESSION_COOKIE)
        self.setup_code = accounts.setup_code()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (raising here if a port is taken) and serve in the background."""
        sockets = self.config.create_sockets()
        ready = threading.Event()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._loop.set_default_executor(ThreadPoolExecutor(self.web.threads, thread_name_prefix="web"))
            self._stopping = asyncio.Event()
            ready.set()
            renewal = asyncio.create_task(self._renew_periodically())
            await worker_serve(self.wsgi, self.config, sockets=sockets, shutdown_trigger=self._stopping.wait)
            renewal.cancel()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), name="web", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.app.extensions["callrec"].watch_recorder()
        log.info("web UI on https://%s:%s/; the certificate to trust (/certificate.crt) has the SHA-256 fingerprint %s",
                 self.web.hostname, self.web.https_port, certificate_fingerprint(to_trust(self.tls_folder).read_text()))
        if self.setup_code:
            message = (f"callrec web setup code: {self.setup_code}  (open https://{self.web.hostname}"
                       f"{'' if self.web.https_port == 443 else f':{self.web.https_port}'}/setup)")
            log.warning(message)       # the unit sends the log to the console too

    async def _renew_periodically(self) -> None:
        while True:
            await asyncio.sleep(RENEW_CHECK_S)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.reload_certificate, False)
            except Exception:
                log.exception("could not renew the web UI's certificate; the current one is still served")

    def reload_certificate(self, force: bool = True) -> None:
        """Serve the current certificate to new connections: after an upload (`force`), or when
        `ensure_certificate` has just issued a new one."""
        cert, key, issued = ensure_certificate(self.tls_folder, self.web.hostname)
        if (force or issued) and self.config.context is not None:
            self.config.context.load_cert_chain(cert, key)
            log.info("the web UI now serves the certificate %s", cert)

    def problem(self, timeout: float) -> str | None:
        """Why the web UI should be restarted (for the watchdog): None while it answers its own
        health check over HTTPS within `timeout` seconds."""
        import urllib.request

        watch = self.app.extensions["callrec"].watch
        if watch is not None and (problem := watch.problem(timeout * 10)) is not None:
            return problem
        host = "127.0.0.1" if self.web.bind in ("0.0.0.0", "::") else self.web.bind
        host = f"[{host}]" if ":" in host else host
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE    # its own certificate
        try:
            with urllib.request.urlopen(f"https://{host}:{self.web.https_port}/healthz", timeout=timeout,
                                        context=context) as answer:
                return None if answer.status == 200 else f"the web UI answers {answer.status} to its health check"
        except OSError as exc:
            return f"the web UI does not answer its health check: {exc}"

    def stop(self) -> None:
        """Stop serving (open streams get a moment to end) and close the databases."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
        self.app.extensions["callrec"].close()
