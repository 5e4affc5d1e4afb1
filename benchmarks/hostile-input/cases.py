"""Send every case of tests/test_hostile_http.py, then a bad request among four good ones (5 times),
to dflash-serve run from the checkout REPO (its shipped pair) on loopback PORT, restarting the
server when a case kills it. Prints one JSON line per case.

    uv run python benchmarks/hostile-input/cases.py REPO PORT > cases.jsonl
"""
import json, os, subprocess, sys, time, signal, threading
import httpx
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from tests.test_hostile_http import CASES  # noqa: E402

repo, port = sys.argv[1], int(sys.argv[2])
url = f"http://127.0.0.1:{port}"

def start():
    p = subprocess.Popen(["uv", "run", "dflash-serve", "--port", str(port), "--router", "guardrails", "--log-level", "critical"],
                         cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return p
        except Exception:
            time.sleep(0.2)
    raise SystemExit("server did not start")

def alive():
    try:
        return httpx.get(url + "/health", timeout=10).status_code == 200
    except Exception:
        return False

server = start()
for text, status, message in CASES:
    try:
        body = json.loads(text) if text.startswith("{") and text.endswith("}") else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        text = json.dumps({"model": "expert", "max_tokens": 12, **body})
    else:
        path = "/v1/completions"
    try:
        r = httpx.post(url + path, content=text.encode(), headers={"content-type": "application/json"}, timeout=120)
        got, msg = r.status_code, r.text[:140]
    except Exception as e:
        got, msg = type(e).__name__, ""
    ok = alive()
    print(json.dumps({"case": text[:70], "status": got, "message": msg.replace("\n", " | "), "alive_after": ok}), flush=True)
    if not ok:
        os.killpg(server.pid, signal.SIGKILL)
        server = start()

# a bad request among good ones
good = ["The quick brown fox", "def add(a, b):", "A small model proposes", "0123456789"]
def post(body, out, i):
    try:
        r = httpx.post(url + "/v1/completions", json=body, timeout=300); out[i] = (r.status_code, r.json().get("choices", [{}])[0].get("text") if r.status_code == 200 else r.text[:100])
    except Exception as e:
        out[i] = (type(e).__name__, "")
alone = {}
for g in good:
    alone[g] = httpx.post(url + "/v1/completions", json={"model": "expert", "prompt": g, "max_tokens": 12}, timeout=300).json()["choices"][0]["text"]
fails = 0
for trial in range(5):
    out = {}
    bodies = [{"model": "expert", "prompt": g, "max_tokens": 12} for g in good] + [{"model": "expert", "prompt": "hi", "max_tokens": 12, "seed": -1, "temperature": 0.7}]
    ts = [threading.Thread(target=post, args=(b, out, i)) for i, b in enumerate(bodies)]
    [t.start() for t in ts]; [t.join() for t in ts]
    fails += sum(1 for i, g in enumerate(good) if out[i] != (200, alone[g]))
    print(json.dumps({"trial": trial, "bad": out[len(good)], "good_wrong": [out[i] for i, g in enumerate(good) if out[i] != (200, alone[g])]}), flush=True)
print(json.dumps({"good_requests_harmed": fails, "of": 5 * len(good)}))
os.killpg(server.pid, signal.SIGTERM)
