"""Real HTTP servers on loopback that follow the paging, cursor, rate-limit and error
contracts of the Stripe, Zendesk and Salesforce APIs, over in-memory data a test edits,
with faults a test injects (429 storms with Retry-After, 500s, outages, bodies dripped a
byte at a time, cut mid-body or not JSON, error bodies echoing the request's headers)."""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Fault:
    status: int
    times: int  # -1 = until cleared
    path_contains: str = ""
    retry_after: str | None = None
    after_ok: int = 0  # let this many matching requests succeed first
    hang_s: float = 0.0  # answer only after this long (a stalled API; the client is killed)
    # Transport faults on the real answer (`status` is then ignored):
    drip_s: float = 0.0  # send the body one byte every drip_s seconds
    drip_headers_s: float = 0.0  # send the status line and headers so, then the body
    cut_body: bool = False  # announce the whole body, send half of it, close
    raw_body: str | None = None  # send this text (not JSON) as the body
    echo_headers: bool = False  # the error body quotes the request's headers


@dataclass
class FakeApi:
    """Subclasses implement route(path, query) -> (status, body)."""

    requests: list[tuple[int, str, dict[str, list[str]], dict[str, str]]] = field(
        default_factory=list
    )
    faults: list[Fault] = field(default_factory=list)
    page_size: int = 2

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.hanging = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                query = parse_qs(url.query, keep_blank_values=True)
                status, body, headers, fault = api._serve(url.path, query, dict(self.headers))
                data = json.dumps(body).encode()
                if fault is not None and fault.raw_body is not None:
                    data = fault.raw_body.encode()
                if fault is not None and fault.drip_headers_s:
                    head = (
                        f"HTTP/1.0 {status} OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n"
                    ).encode()
                    try:
                        for i in range(len(head)):
                            self.wfile.write(head[i : i + 1])
                            self.wfile.flush()
                            time.sleep(fault.drip_headers_s)
                        self.wfile.write(data)
                    except OSError:
                        pass
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if fault is not None and fault.drip_s:
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(fault.drip_s)
                    elif fault is not None and fault.cut_body:
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                    else:
                        self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a deadline): nothing to answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()

    def _serve(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str], Fault | None]:
        with self._lock:
            for fault in self.faults:
                if fault.path_contains not in path or fault.times == 0:
                    continue
                if fault.after_ok > 0:
                    fault.after_ok -= 1
                    continue
                if fault.times > 0:
                    fault.times -= 1
                if fault.hang_s:
                    self.hanging.set()
                    self._lock.release()
                    try:
                        time.sleep(fault.hang_s)
                    finally:
                        self._lock.acquire()
                if (
                    fault.drip_s
                    or fault.drip_headers_s
                    or fault.cut_body
                    or fault.raw_body is not None
                ):
                    status, body = self.route(path, query)
                    self.requests.append((status, path, query, headers))
                    return status, body, {}, fault
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                self.requests.append((fault.status, path, query, headers))
                error: dict[str, Any] = {"error": "injected"}
                if fault.echo_headers:
                    auth = headers.get("Authorization")
                    error = {"error": {"message": f"invalid request, Authorization: {auth}"}}
                return fault.status, error, extra, None
            status, body = self.route(path, query)
            self.requests.append((status, path, query, headers))
            return status, body, {}, None

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        raise NotImplementedError

    def statuses(self, path_contains: str = "") -> list[int]:
        return [s for s, p, _, _ in self.requests if path_contains in p]


def _q(query: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    return query.get(name, [default])[0]


class FakeStripe(FakeApi):
    """Lists newest first with starting_after/has_more and created[gt] / created[gte];
    /v1/events with type wildcards. Objects carry `created` (seconds, as Stripe's)."""

    def __post_init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {
            c: [] for c in ("customers", "charges", "invoices", "subscriptions")
        }
        self.events: list[dict[str, Any]] = []
        self.clock = 1_790_000_000
        super().__post_init__()

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def create(self, collection: str, **fields: Any) -> dict[str, Any]:
        obj = {"id": fields.pop("id"), "object": collection[:-1], "created": self.tick(), **fields}
        self.objects[collection].append(obj)
        return obj

    def update(self, collection: str, oid: str, event_type: str, **fields: Any) -> None:
        obj = next(o for o in self.objects[collection] if o["id"] == oid)
        obj.update(fields)
        self.emit(event_type, obj)

    def emit(self, event_type: str, obj: dict[str, Any]) -> None:
        """An event about `obj`, which may be of a type no list endpoint here serves
        (a dispute under `charge.dispute.created`), as Stripe sends them."""
        self.events.append(
            {
                "id": f"evt_{len(self.events):05d}",
                "type": event_type,
                "created": self.tick(),
                "data": {"object": dict(obj)},
            }
        )

    def _page(self, items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
        items = sorted(items, key=lambda o: (o["created"], o["id"]), reverse=True)
        gt = _q(query, "created[gt]")
        if gt is not None:
            items = [o for o in items if o["created"] > int(gt)]
        gte = _q(query, "created[gte]")
        if gte is not None:
            items = [o for o in items if o["created"] >= int(gte)]
        after = _q(query, "starting_after")
        if after:
            index = next(i for i, o in enumerate(items) if o["id"] == after)
            items = items[index + 1 :]
        limit = min(int(_q(query, "limit", "10")), self.page_size)
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/v1/events":
            pattern = _q(query, "type", "*")
            return 200, self._page(
                [e for e in self.events if fnmatch.fnmatchcase(e["type"], pattern)], query
            )
        collection = path.rsplit("/", 1)[-1]
        if collection not in self.objects:
            return 404, {"error": {"message": "Unrecognized request URL"}}
        return 200, self._page(self.objects[collection], query)


class FakeZendesk(FakeApi):
    """Cursor-based incremental exports for tickets and users, time-based for
    organizations; every object carries `updated_at` (epoch seconds)."""

    def __post_init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {
            c: [] for c in ("tickets", "users", "organizations")
        }
        self.clock = 1_790_000_000
        super().__post_init__()

    def put(self, collection: str, **fields: Any) -> None:
        self.clock += 1
        items = self.objects[collection]
        items[:] = [o for o in items if o["id"] != fields["id"]]
        items.append({**fields, "updated_at": self.clock})

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        match = re.match(r"^/api/v2/incremental/(\w+)(/cursor)?\.json$", path)
        if not match:
            return 404, {"error": "InvalidEndpoint"}
        collection, cursor_based = match.group(1), bool(match.group(2))
        items = sorted(self.objects[collection], key=lambda o: (o["updated_at"], o["id"]))
        if cursor_based:
            cursor = _q(query, "cursor")
            if cursor:
                stamp, oid = json.loads(base64.b64decode(cursor))
                items = [o for o in items if (o["updated_at"], o["id"]) > (stamp, oid)]
            else:
                start = int(_q(query, "start_time", "0"))
                items = [o for o in items if o["updated_at"] >= start]
            page = items[: self.page_size]
            last = page[-1] if page else None
            after = (
                base64.b64encode(json.dumps([last["updated_at"], last["id"]]).encode()).decode()
                if last
                else cursor
            )
            return 200, {
                collection: page,
                "after_cursor": after,
                "end_of_stream": len(items) <= self.page_size,
            }
        # Zendesk: "all the items that were created or changed on or after the start time"
        start = int(_q(query, "start_time", "0"))
        items = [o for o in items if o["updated_at"] >= start]
        page = items[: self.page_size]
        end_time = page[-1]["updated_at"] if page else start
        return 200, {
            collection: page,
            "end_time": end_time,
            "end_of_stream": len(items) <= self.page_size,
        }


class FakeSalesforce(FakeApi):
    """queryAll with `SELECT fields FROM Object WHERE SystemModstamp >= dt ORDER BY
    SystemModstamp ASC`, paged through nextRecordsUrl (queryMore)."""

    def __post_init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {
            o: [] for o in ("Account", "Contact", "Opportunity", "Lead")
        }
        self.clock = 0
        self.pending: dict[str, list[dict[str, Any]]] = {}
        super().__post_init__()

    def _stamp(self) -> str:
        self.clock += 1
        minutes, seconds = divmod(self.clock, 60)
        return f"2026-11-01T10:{minutes:02d}:{seconds:02d}.000+0000"

    def put(self, sobject: str, **fields: Any) -> None:
        items = self.records[sobject]
        items[:] = [r for r in items if r["Id"] != fields["Id"]]
        items.append({"IsDeleted": False, **fields, "SystemModstamp": self._stamp()})

    def delete(self, sobject: str, rid: str) -> None:
        record = next(r for r in self.records[sobject] if r["Id"] == rid)
        self.put(sobject, **{**record, "IsDeleted": True})

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        base = "/services/data/v59.0"
        if path.startswith(f"{base}/query/"):
            token = path.rsplit("/", 1)[-1]
            results = self.pending.get(token)
            if results is None:
                return 400, [{"errorCode": "INVALID_QUERY_LOCATOR"}]
            return 200, self._page(token, results)
        if path != f"{base}/queryAll":
            return 404, [{"errorCode": "NOT_FOUND"}]
        soql = unquote(_q(query, "q", ""))
        match = re.match(
            r"SELECT (.+) FROM (\w+) WHERE SystemModstamp >= (\S+) ORDER BY SystemModstamp ASC$",
            soql,
        )
        if not match:
            return 400, [{"errorCode": "MALFORMED_QUERY", "message": soql}]
        fields = [f.strip() for f in match.group(1).split(",")]
        since = match.group(3).replace("Z", "")
        rows = [
            {
                "attributes": {"type": match.group(2)},
                **{f: r.get(f) for f in fields},
            }
            for r in sorted(self.records[match.group(2)], key=lambda r: r["SystemModstamp"])
            if r["SystemModstamp"][:19] >= since
        ]
        token = f"01g{len(self.pending):05d}"
        self.pending[token] = rows
        return 200, self._page(token, rows)

    def _page(self, token: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        page, rest = rows[: self.page_size], rows[self.page_size :]
        body: dict[str, Any] = {"totalSize": len(rows), "done": not rest, "records": page}
        if rest:
            next_token = f"{token}-{len(self.pending)}"
            self.pending[next_token] = rest
            body["nextRecordsUrl"] = f"/services/data/v59.0/query/{next_token}"
        return body
