"""The latency of a small request and the server's RSS while a large body is sent.

    uv run python benchmarks/hostile-input/body_limit.py PORT SERVER_PID 3.9,18

Against dflash-serve (the shipped pair) on loopback PORT: a 4-token request alone (3 times), then,
for each size in MB, the same request sent 0.3 s after a /v1/completions body of that size (a
text prompt of repeated words) starts; the server's RSS (from /proc/SERVER_PID) sampled meanwhile.
Prints JSON.
"""
import http.client, json, sys, threading, time

port, pid = int(sys.argv[1]), int(sys.argv[2])
sizes_mb = [float(x) for x in sys.argv[3].split(",")]

def rss_mb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def post(body: bytes, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    tic = time.perf_counter()
    try:
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse(); data = r.read()
        return r.status, time.perf_counter() - tic, data[:160]
    except Exception as e:
        return type(e).__name__, time.perf_counter() - tic, b""
    finally:
        c.close()

small = json.dumps({"model": "expert", "prompt": "Hello", "max_tokens": 4}).encode()
out = {"rss_start_mb": rss_mb(), "alone_s": [post(small)[1] for _ in range(3)], "runs": []}
for mb in sizes_mb:
    big = json.dumps({"model": "expert", "prompt": "word " * int(mb * 1e6 / 5), "max_tokens": 4}).encode()
    result = {}
    t = threading.Thread(target=lambda: result.update(big=post(big)))
    peak = [rss_mb()]
    t.start(); time.sleep(0.3)
    status, small_s, _ = post(small)
    while t.is_alive():
        peak.append(rss_mb()); time.sleep(0.05)
    t.join()
    out["runs"].append({"body_mb": len(big) / 1e6, "big_status": result["big"][0], "big_s": result["big"][1],
                        "big_reply": result["big"][2].decode(errors="replace"), "small_status": status,
                        "small_during_s": small_s, "rss_peak_mb": max(peak), "rss_after_mb": rss_mb()})
print(json.dumps(out, indent=1))
