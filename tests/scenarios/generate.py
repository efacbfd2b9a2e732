#!/usr/bin/env python3
"""Writes tests/scenarios/<name>/readings.csv for every scenario of the replay corpus.

Deterministic (no randomness): run it again and the files do not change. Each scenario's
config.toml and expect.toml are written by hand; this only makes the recordings, in the
format of src/recording.rs. Run from anywhere: python3 tests/scenarios/generate.py
"""

import datetime
import os

HERE = os.path.dirname(os.path.abspath(__file__))
# 2026-11-22T10:00:00Z
T0 = 1795341600
HEADER = "time,kind,target,signal,state,value,requests,detail"


def ts(s):
    t = datetime.datetime.fromtimestamp(T0 + s, tz=datetime.timezone.utc)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    ms = round((s - int(s)) * 1000)
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


class Recording:
    def __init__(self, target="shop"):
        self.rows = []
        self.target = target

    def change(self, s, rev):
        self.rows.append((s, f"{ts(s)},change,{self.target},,,{rev},,"))

    def rate(self, s, signal, errors, requests):
        # Counts, as the engine judges them: `errors` of `requests`.
        self.rows.append((s, f"{ts(s)},reading,{self.target},{signal},value,{errors},{requests},"))

    def number(self, s, signal, v):
        self.rows.append((s, f"{ts(s)},reading,{self.target},{signal},value,{v:.4f},,"))

    def check(self, s, signal, ok):
        detail = "" if ok else "HTTP 503 Service Unavailable"
        self.rows.append((s, f"{ts(s)},reading,{self.target},{signal},value,{1 if ok else 0},,{detail}"))

    def event(self, s, signal, key):
        self.rows.append((s, f"{ts(s)},reading,{self.target},{signal},value,{key},,"))

    def no_data(self, s, signal):
        self.rows.append((s, f"{ts(s)},reading,{self.target},{signal},no_data,,,"))

    def error(self, s, signal, why):
        self.rows.append((s, f"{ts(s)},reading,{self.target},{signal},error,{why},,"))

    def write(self, name):
        # A stable sort keeps rows of the same second in the order they were added.
        rows = sorted(self.rows, key=lambda r: r[0])
        path = os.path.join(HERE, name, "readings.csv")
        with open(path, "w") as f:
            f.write(HEADER + "\n")
            for _, line in rows:
                f.write(line + "\n")


def errors_with_rollback(name, after_rollback_errors):
    """v2 serves 8% errors (80 of 1000 requests) from its deploy at 5m; whoever rolls back
    switches to v1 at 6m30s (the recording shows the revision going back); after it
    `after_rollback_errors` of 1000 requests fail."""
    r = Recording()
    r.change(0, "v1")
    for s in range(5, 12 * 60 + 1, 5):
        if s <= 5 * 60:
            errors = 3
        elif s <= 6 * 60 + 30:
            errors = 80
        else:
            errors = after_rollback_errors
        r.rate(s, "errors", errors, 1000)
    r.change(5 * 60, "v2")
    r.change(6 * 60 + 30, "v1")
    r.write(name)


def bad_deploy():
    errors_with_rollback("bad-deploy-8pct-errors", 2)


def rollback_does_not_fix():
    errors_with_rollback("rollback-does-not-fix", 80)


def night_small_samples():
    # 03:00 local-ish traffic: a handful of requests. 1 error in 3 requests (33%) and 2 in
    # 25 (8%): above 5%, but too few requests (min_requests) or not surely above it
    # (confidence 95%).
    r = Recording()
    r.change(0, "v41")
    r.change(60, "v42")
    for i, s in enumerate(range(90, 15 * 60 + 1, 30)):
        if i % 2 == 0:
            r.rate(s, "errors", 1, 3)
        else:
            r.rate(s, "errors", 2, 25)
    r.write("night-one-error-in-three")


def spike_inside_for():
    r = Recording()
    r.change(0, "v1")
    r.change(60, "v2")
    for s in range(5, 12 * 60 + 1, 5):
        spike = 4 * 60 <= s < 4 * 60 + 30
        r.rate(s, "errors", 200 if spike else 4, 1000)
    r.write("spike-30s-inside-5m-for")


def prometheus_down():
    r = Recording()
    r.change(0, "v1")
    r.change(3 * 60, "v2")
    for s in range(5, 18 * 60 + 1, 5):
        if 5 * 60 <= s < 15 * 60:
            r.error(s, "errors", "Get http://prometheus:9090/api/v1/query: connection refused")
        else:
            r.rate(s, "errors", 3, 1000)
    r.write("prometheus-down-10m")


def latency_creep():
    r = Recording()
    r.change(0, "v1")
    for s in range(10, 22 * 60 + 1, 10):
        wobble = ((s // 10) % 5 - 2) * 0.002  # -0.004 .. +0.004, deterministic
        if s <= 10 * 60:
            v = 0.200 + wobble
        elif s <= 16 * 60:
            v = 0.200 + 0.120 * (s - 10 * 60) / (6 * 60) + wobble  # creeping to 0.32
        elif s <= 17 * 60 + 30:
            v = 0.320 + wobble
        else:
            v = 0.200 + wobble  # back on v1
        r.number(s, "p95", v)
    r.change(10 * 60, "v2")
    r.change(17 * 60 + 30, "v1")
    r.write("latency-creep-1.6x-baseline")


def oom_loop():
    r = Recording()
    r.change(0, "v1")
    r.change(2 * 60, "v2")
    for s in range(5, 10 * 60 + 1, 5):
        r.check(s, "health", True)
    for s, pod in [(180, "shop-7f9c-a"), (220, "shop-7f9c-b"), (260, "shop-7f9c-c"), (300, "shop-7f9c-d")]:
        r.event(s, "oom", pod)
    r.change(5 * 60 + 15, "v1")
    r.write("oom-loop-4-pods")


def outage_days_after_deploy():
    r = Recording()
    r.change(0, "v1")
    r.change(60, "v2")
    for s in range(65, 5 * 60 + 1, 5):
        r.check(s, "health", True)
    day3 = 3 * 86400
    for s in range(day3, day3 + 6 * 60 + 1, 5):
        down = day3 + 60 <= s < day3 + 3 * 60
        r.check(s, "health", not down)
    r.write("outage-3-days-after-deploy")


def flapping_health():
    r = Recording()
    r.change(0, "v1")
    r.change(60, "v2")
    for i, s in enumerate(range(65, 12 * 60 + 1, 5)):
        r.check(s, "health", i % 2 == 0)
    r.write("flapping-health-check")


def bad_revision_redeployed():
    # v2 serves 8% errors and is rolled back to v1 (6m30s); at 15m someone deploys v2
    # again, and rearguard says so at once, before v2 breaks anything.
    r = Recording()
    r.change(0, "v1")
    for s in range(5, 18 * 60 + 1, 5):
        bad = 5 * 60 < s <= 6 * 60 + 30
        r.rate(s, "errors", 80 if bad else 2, 1000)
    r.change(5 * 60, "v2")
    r.change(6 * 60 + 30, "v1")
    r.change(15 * 60, "v2")
    r.write("bad-revision-redeployed")


def p95_noise_before_deploy():
    # p95 hovers around its 200ms bar on v1: 70s above, 20s below, over and over, so the
    # rule is pending again and again but never fires (for = 2m); the last streak breaks
    # at 9m, a minute before v2 is deployed. v2 serves 8% errors from its deploy.
    r = Recording()
    r.change(0, "v1")
    for s in range(10, 14 * 60 + 1, 10):
        if s < 9 * 60:
            v = 0.215 if (s // 10) % 9 < 7 else 0.185
        else:
            v = 0.150
        r.number(s, "p95", v)
    for s in range(5, 14 * 60 + 1, 5):
        r.rate(s, "errors", 80 if s > 10 * 60 else 2, 1000)
    r.change(10 * 60, "v2")
    r.write("p95-noise-before-deploy")


def old_incident_then_deploy():
    # v1 serves 8% errors from 1m: an incident opens with nothing to blame (no change
    # seen) and is escalated. v2 is deployed at 10m over it; errors stay, and p95 breaks
    # from 11m: that breach is v2's, judged in an incident of its own.
    r = Recording()
    r.change(0, "v1")
    for s in range(5, 16 * 60 + 1, 5):
        r.rate(s, "errors", 80 if s > 60 else 2, 1000)
    for s in range(10, 16 * 60 + 1, 10):
        r.number(s, "p95", 0.5 if s > 11 * 60 else 0.12)
    r.change(10 * 60, "v2")
    r.write("old-incident-then-deploy")


def rollback_then_silence():
    # v2 serves 8% errors from its deploy at 5m; the rollback to v1 at 6m30s leaves the
    # shop without traffic (the query answers, with no series). The rule's no_data = "ok"
    # clears it, but silence verifies nothing: rolled back, not verified.
    r = Recording()
    r.change(0, "v1")
    for s in range(5, 12 * 60 + 1, 5):
        if s <= 5 * 60:
            r.rate(s, "errors", 3, 1000)
        elif s <= 6 * 60 + 30:
            r.rate(s, "errors", 80, 1000)
        else:
            r.no_data(s, "errors")
    r.change(5 * 60, "v2")
    r.change(6 * 60 + 30, "v1")
    r.write("rollback-then-silence")


def errors_in_phases(name, deploy_at, end, phases):
    """v1 from 0, v2 from `deploy_at`, an `errors` reading every 5s up to `end`. Each
    phase is (until, errors, requests), or (until, None, why) for a source error; a
    reading takes the first phase it is before, 3 errors of 1000 requests after the
    last."""
    r = Recording()
    r.change(0, "v1")
    r.change(deploy_at, "v2")
    for s in range(5, end + 1, 5):
        _, errors, n = next((p for p in phases if s < p[0]), (None, 3, 1000))
        if errors is None:
            r.error(s, "errors", n)
        else:
            r.rate(s, "errors", errors, n)
    r.write(name)


def lull_after_pending():
    # v2 breaches for 1m of a 2m `for`, then traffic drops to 40 requests a window
    # (insufficient samples, held) for 8 minutes; when traffic returns, a 30s burst of
    # errors (a cold cache) and then nothing. The lull is not time in breach.
    errors_in_phases("lull-inside-2m-for", 5 * 60, 20 * 60, [
        (6 * 60, 3, 1000),
        (7 * 60, 80, 1000),
        (15 * 60, 2, 40),
        (15 * 60 + 30, 80, 1000),
    ])


def blind_inside_breach():
    # v2 breaches for 1m of a 2m `for`; Prometheus is unreachable for 3 minutes (blind
    # after 2m); when it answers again the breach goes on for 55s more and ends. The
    # blind spell is not time in breach: the rule must prove its 2m from 9m on.
    refused = "Get http://prometheus:9090/api/v1/query: connection refused"
    errors_in_phases("blind-spell-inside-2m-for", 3 * 60, 15 * 60, [
        (5 * 60, 3, 1000),
        (6 * 60, 80, 1000),
        (9 * 60, None, refused),
        (10 * 60, 80, 1000),
    ])


def prometheus_every_other_query():
    # v2 (deployed at 3m) serves 8% errors, but from 3m30s every other Prometheus query
    # times out. No run of readings ever lasts the rule's 1m `for`, and no outage lasts
    # `blind_after`: only the share of failed evaluations says the watchdog cannot see.
    timeout = "Post http://prometheus:9090/api/v1/query: context deadline exceeded"
    r = Recording()
    r.change(0, "v1")
    r.change(3 * 60, "v2")
    for i, s in enumerate(range(5, 17 * 60 + 1, 5)):
        if s >= 3 * 60 + 30 and i % 2 == 0:
            r.error(s, "errors", timeout)
        else:
            r.rate(s, "errors", 3 if s < 3 * 60 else 80, 1000)
    r.write("prometheus-fails-every-other-query")


def config_only_change(name, base):
    # Revision `base` runs from the start; at 5m only its configuration changes (a
    # ConfigMap, an .env file: the observer names it base+cfg.1) and 8% of requests
    # fail; whoever rolls back restores the configuration at 6m30s, which the observer
    # sees as base+cfg.2 (the same Deployment revision or release).
    r = Recording()
    r.change(0, base)
    for s in range(5, 12 * 60 + 1, 5):
        errors = 80 if 5 * 60 < s <= 6 * 60 + 30 else 3
        r.rate(s, "errors", errors, 1000)
    r.change(5 * 60, f"{base}+cfg.1")
    r.change(6 * 60 + 30, f"{base}+cfg.2")
    r.write(name)


def thin_baseline():
    # rearguard starts at 10:00 and v2 is deployed 30s later: three p95 readings of a
    # quiet moment (100ms) are all there is before the change. v2 runs at the service's
    # usual 180ms. Three readings covering 5% of the 10m window are no baseline, so the
    # `> 1.5x baseline` rule holds instead of rolling back a healthy deploy.
    r = Recording()
    r.change(0, "v1")
    for s in range(10, 21 * 60 + 1, 10):
        wobble = ((s // 10) % 5 - 2) * 0.002
        r.number(s, "p95", (0.100 if s <= 30 else 0.180) + wobble)
    r.change(30, "v2")
    r.write("deploy-right-after-start-thin-baseline")


class Noise:
    """A seeded xorshift generator: the recordings are the same on every run."""

    def __init__(self, seed):
        self.s = seed

    def uniform(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 7
        s ^= (s << 17) & 0xFFFFFFFFFFFFFFFF
        self.s = s
        return (s >> 11) / float(1 << 53)

    def normal(self):
        import math
        u = max(self.uniform(), 1e-12)
        return math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * self.uniform())

    def binomial(self, n, p):
        return sum(1 for _ in range(n) if self.uniform() < p)


def judged_errors(name, seed, per_minute, before, after, minutes_after, rollback_at=None):
    # Readings every 15s of a 1m window (so each overlaps the last three); deployed at
    # 60m after an hour of v1. Each 15s slice of traffic is drawn once; a reading sums
    # the last four slices, as Prometheus's increase over 1m does.
    r = Recording()
    noise = Noise(seed)
    r.change(0, "v1")
    slices = []
    end = 60 * 60 + minutes_after * 60
    for s in range(15, end + 1, 15):
        on_v2 = 60 * 60 < s <= (rollback_at or end + 1)
        ratio = after if on_v2 else before
        # Requests of this slice: a quarter of the minute's, spread evenly when fewer.
        n = (s // 15) * per_minute // 4 - (s // 15 - 1) * per_minute // 4
        slices.append((noise.binomial(n, ratio), n))
        last = slices[-4:]
        r.rate(s, "errors", sum(e for e, _ in last), sum(n for _, n in last))
    r.change(60 * 60, "v2")
    if rollback_at:
        r.change(rollback_at, "v1")
    r.write(name)


def judge_regression():
    # v2 triples the error ratio (1% to 3%) at 400 requests a minute: below the
    # runbook's 5% bar, so a threshold rule never sees it; the judge does. The rollback
    # (v1 again) is recorded 20m after the deploy.
    judged_errors("judge-errors-tripled-regression", 11, 400, 0.01, 0.03, 50, rollback_at=60 * 60 + 20 * 60)


def judge_low_traffic():
    # 2 requests a minute at a 2% error ratio: an hour before the change is 120 requests
    # with a few errors, and v2's first 40 minutes say as little. The judge stays
    # inconclusive, never acts, and tells people it cannot judge v2 after 30m.
    judged_errors("judge-low-traffic-deploy", 12, 2, 0.02, 0.02, 40)


def judge_noisy_healthy():
    # p95 around 190ms, its bar 200ms: each minute's p95 wanders by 8% and the service
    # drifts slowly; v2 is the same service. The judge must not fire.
    r = Recording()
    noise = Noise(13)
    r.change(0, "v1")
    drift = 0.0
    for s in range(15, 120 * 60 + 1, 15):
        drift = 0.98 * drift + 0.01 * noise.normal()
        r.number(s, "p95", 0.190 * (1 + drift + 0.08 * noise.normal()))
    r.change(60 * 60, "v2")
    r.write("judge-noisy-healthy-deploy")


if __name__ == "__main__":
    bad_deploy()
    rollback_does_not_fix()
    night_small_samples()
    spike_inside_for()
    prometheus_down()
    latency_creep()
    oom_loop()
    outage_days_after_deploy()
    flapping_health()
    bad_revision_redeployed()
    p95_noise_before_deploy()
    old_incident_then_deploy()
    rollback_then_silence()
    lull_after_pending()
    blind_inside_breach()
    prometheus_every_other_query()
    config_only_change("configmap-only-change", "18")
    config_only_change("env-file-only-change", "v18")
    thin_baseline()
    judge_regression()
    judge_low_traffic()
    judge_noisy_healthy()
