"""Traffic economics (plan/traffic.py, `tokenomy plan --traffic`): a worked example priced
dedicated, autoscaled, serverless and by API with the arithmetic written out beside each
figure (the README's example), the crossovers in the right order, the profile sources
(built-in shapes, files, the gateway's ledger), the CLI's table, JSON and plot, and its
one-line refusals of bad profiles."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from tokenomy import plan
from tokenomy.cli import commands
from tokenomy.plan import PlanResult, TrafficConfig
from tokenomy.plan.traffic import Replica, Settings, economics, price_options
from tokenomy.plan.traffic_profile import Profile, load_profile, traffic_catalog

CLI = commands()
MONTH_DAYS = 730 / 24  # a month is 730 hours: 30.4167 days of a daily profile

# The worked example (README, "Traffic economics"): one replica serves 10 req/s at the SLO
# for $2/hour on 1 GPU, a request takes 10 s; 1000 tokens in, 200 out.
WORKDAY = [0.0] * 4 + [0.02] * 4 + [15.0] * 12 + [25.0] * 4  # req/s, hours 0-23
REPLICA = Replica(scheme="fp8", gpu="X1", gpus=1, requests_per_s=10, usd_per_hour=2.0,
                  request_s=10, input_tokens=1000, output_tokens=200)
SETTINGS = Settings(min_replicas=0, cold_start_s=120, idle_timeout_s=40,
                    serverless_usd_per_gpu_s=0.001, serverless_basis="test",
                    api_usd_per_m_input=0.5, api_usd_per_m_output=1.5, api_basis="test")


def _profile(hours, name="test") -> Profile:
    return Profile(name=name, source=name, unit="requests_per_s", requests_per_s=hours)


def _options(profile, replica=REPLICA, settings=SETTINGS) -> dict:
    return {o.option: o for o in price_options(profile, replica, settings)}


def test_worked_example_by_hand():
    o = _options(_profile(WORKDAY))
    requests = (4 * 0.02 + 12 * 15 + 4 * 25) * 3600  # 280.08 req/s-hours = 1,008,288 a day
    work = requests / 10  # replica-seconds at full batch: 100,828.8

    # dedicated: ceil(25 / 10) = 3 replicas x $2 x 730 h
    assert o["dedicated"].usd_per_month == pytest.approx(3 * 2 * 730)  # $4,380
    assert o["dedicated"].utilization == pytest.approx(work / (3 * 86_400))  # 38.9%
    assert o["dedicated"].cold_start_share == 0

    # autoscaled, min 0: replicas 0,0,0,0 | 1 x4 | 2 x12 | 3 x4 = 40 replica-hours a day,
    # 3 starts (hours 4, 8, 20; hour 0 follows hour 23: 3 -> 0 is no start) x 120 s billed
    billed = 40 * 3600 + 3 * 120  # 144,360 replica-seconds
    assert o["autoscaled"].usd_per_month == pytest.approx(billed / 3600 * 2 * MONTH_DAYS)
    assert o["autoscaled"].usd_per_month == pytest.approx(2439.42, abs=0.01)
    assert o["autoscaled"].utilization == pytest.approx(work / billed)  # 69.8%
    # requests above the warm replicas' capacity in each start's first 120 s:
    # hour 4: (0.02 - 0) x 120 = 2.4; hour 8: (15 - 10) x 120 = 600; hour 20: (25 - 20) x 120
    assert o["autoscaled"].cold_start_share == pytest.approx((2.4 + 600 + 600) / requests)

    # serverless, $0.001/GPU-s, idle 40 s: a container is up 1 - e^-w of an hour, w = rest
    # x (10 s + 40 s); full containers floor(demand / 10) all hour
    quiet_up = 3600 * (1 - math.exp(-0.02 * 50))  # 0.02 req/s: w = 1, up 63.2%: 2,275.6 s
    quiet_colds = 0.02 * 3600 * math.exp(-1)  # 26.5 requests an hour find it stopped
    busy = 12 * (3600 + 3600) + 4 * (2 * 3600 + 3600)  # 15 req/s: 1 full + 5 (w = 250)
    # starts: each quiet-hour cold start, and scaling out the running fleet at hours 8
    # (1 -> 2 containers) and 20 (2 -> 3); hour 4's start from zero is a quiet cold start
    starts = 4 * quiet_colds + 2
    billed = 4 * quiet_up + busy + starts * 120  # 151,656 container-seconds
    assert o["serverless"].usd_per_month == pytest.approx(billed * 0.001 * MONTH_DAYS)
    assert o["serverless"].usd_per_month == pytest.approx(4612.88, abs=0.01)
    assert o["serverless"].utilization == pytest.approx(work / billed)  # 66.5%
    # the quiet hours' cold starts, and 5 req/s above the fleet for 120 s at hours 8 and 20
    assert o["serverless"].cold_start_share == pytest.approx(
        (4 * quiet_colds + 600 + 600) / requests)

    # api: (1000 x $0.5 + 200 x $1.5) / 1M = $0.0008 a request
    assert o["api"].usd_per_month == pytest.approx(requests * MONTH_DAYS * 0.0008)  # $24,535
    assert o["api"].utilization is None and o["api"].cold_start_share == 0


def test_worked_example_lifetime_and_cheapest():
    e = economics(_profile(WORKDAY), REPLICA, SETTINGS, training_usd=50_000, life_months=24)
    assert e.cheapest == "autoscaled"
    auto = next(o for o in e.options if o.option == "autoscaled")
    lifetime = 50_000 + 24 * 2439.4167  # training + 24 months of inference = $108,546
    assert auto.lifetime_usd == pytest.approx(lifetime, abs=0.01)
    assert auto.training_share == pytest.approx(50_000 / lifetime)  # 46%
    assert e.crossovers == []  # autoscaled (scaling to zero at night) wins 0.1x-10x


def test_min_replicas_keep_the_night_warm():
    one = _options(_profile(WORKDAY), settings=SETTINGS.model_copy(update={"min_replicas": 1}))
    # replicas 1 x8 | 2 x12 | 3 x4 = 44 replica-hours; starts at hours 8 and 20
    assert one["autoscaled"].usd_per_month == pytest.approx(
        (44 * 3600 + 2 * 120) / 3600 * 2 * MONTH_DAYS)
    assert one["autoscaled"].cold_start_share == pytest.approx(1200 / (280.08 * 3600))


def test_flat_crossover_by_hand():
    """Flat 1 req/s: the API ($0.0008 a request) is cheapest below the traffic where it
    costs what one dedicated replica does, 1460 / (0.0008 x 3600 x 730) = 0.694 req/s;
    above it dedicated (tied by autoscaled: nothing to scale) until 10x."""
    e = economics(_profile([1.0] * 24, "flat"), REPLICA, SETTINGS)
    assert [c.below for c in e.crossovers] == ["api"]
    assert [c.above for c in e.crossovers] == ["dedicated"]
    assert e.crossovers[0].mean_requests_per_s == pytest.approx(
        2 * 730 / (0.0008 * 3600 * 730), abs=1e-5)  # ties to the cent go to dedicated
    tiny, high = e.sweep[0], e.sweep[-1]
    assert min(tiny.usd_per_month, key=tiny.usd_per_month.get) == "api"
    assert high.usd_per_month["dedicated"] == pytest.approx(2 * 730)  # 10 req/s: 1 replica


def test_crossovers_run_from_api_at_tiny_traffic_to_replicas_at_high():
    diurnal = load_profile("diurnal", rate=1.0)
    e = economics(diurnal, REPLICA, SETTINGS)
    levels = [c.level for c in e.crossovers]
    assert levels == sorted(levels) and e.crossovers, e.crossovers
    assert e.crossovers[0].below == "api"
    assert e.crossovers[-1].above in ("dedicated", "autoscaled")
    for before, after in zip(e.crossovers, e.crossovers[1:], strict=False):
        assert before.above == after.below  # a chain: each switch starts where the last ended
    for c in e.crossovers:  # at a crossover the new option is the cheapest
        costs = _options(diurnal.scaled(c.level))
        assert costs[c.above].usd_per_month == pytest.approx(
            min(x.usd_per_month for x in costs.values()), abs=0.01)  # ties: to the cent


def test_builtin_shapes_average_one():
    for shape in traffic_catalog().shapes:
        assert len(shape.hours) == 24, shape.name
        assert sum(shape.hours) / 24 == pytest.approx(1.0), shape.name
    diurnal = load_profile("diurnal", rate=10)
    assert diurnal.mean == pytest.approx(10) and diurnal.peak == pytest.approx(16)


def test_profile_files(tmp_path):
    (tmp_path / "a.csv").write_text("hour,requests_per_s\n" + "".join(
        f"{h},{h % 3}\n" for h in reversed(range(24))))  # any order, by hour
    (tmp_path / "b.yaml").write_text("unit: multiplier\nhours: [" + ", ".join(
        ["2"] * 168) + "]\n")  # a week
    (tmp_path / "c.csv").write_text("\n".join(["0.5"] * 24))  # bare multipliers
    a = load_profile(str(tmp_path / "a.csv"), rate=99)
    assert a.unit == "requests_per_s" and a.requests_per_s[:4] == [0, 1, 2, 0]
    b = load_profile(str(tmp_path / "b.yaml"), rate=3)
    assert len(b.requests_per_s) == 168 and b.mean == pytest.approx(6)
    assert load_profile(str(tmp_path / "c.csv"), rate=4).mean == pytest.approx(2)
    week = _options(b)  # a weekly profile: 730 / 168 weeks a month
    assert week["api"].usd_per_month == pytest.approx(6 * 3600 * 730 * 0.0008)


def test_ledger_profile(tmp_path):
    """Requests per UTC hour of day, averaged over the days the ledger spans."""
    from tokenomy.serve.ledger import Ledger, usage

    url = f"sqlite:///{tmp_path / 'usage.db'}"
    ledger = Ledger(url)
    day = 86_400 * 20_000  # a UTC midnight
    times = [day + 9 * 3600 + i for i in range(36)] + [day + 86_400 + 9 * 3600 + 5,
                                                      day + 86_400 + 23 * 3600 + 1799]
    with ledger.engine.begin() as conn:
        conn.execute(usage.insert(), [
            {"id": f"r{i}", "key_id": "anonymous", "endpoint": "chat", "model": "m",
             "status": "ok", "stream": False, "started_at": t, "prompt_tokens": 10,
             "completion_tokens": 5, "cached_tokens": 0, "reserved_usd": 0, "cost_usd": 0}
            for i, t in enumerate(times)])
    ledger.close()
    p = load_profile(f"ledger:{url}", rate=123)  # absolute: the rate is ignored
    # 2 days: 36 + 1 requests at 09:00, 1 at 23:00 -> 37 / (2 x 3600) and 1 / (2 x 3600)
    assert p.unit == "requests_per_s" and "38 requests over 2 day(s)" in p.source
    assert p.requests_per_s[9] == pytest.approx(37 / 7200)
    assert p.requests_per_s[23] == pytest.approx(1 / 7200)
    assert sum(p.requests_per_s) == pytest.approx(38 / 7200)


def _run(args):
    return CliRunner().invoke(CLI, ["plan", "llama-3.1-8b", "--gpu", "H100-SXM", "--scheme",
                                    "fp8", *args], catch_exceptions=False)


def test_cli_json_dedicated_and_api_by_hand(tmp_path):
    """Through the CLI on a real plan row: the figures follow from the row's capacity."""
    path = tmp_path / "day.yaml"
    path.write_text("unit: requests_per_s\nhours: [" + ", ".join(
        ["20"] * 12 + ["130"] * 12) + "]\n")
    r = _run(["--traffic", str(path), "--api-price", "0.5:1.5", "--serverless-price",
              "0.001", "--min-replicas", "0", "--json"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)["traffic"]
    rep, o = t["replica"], {x["option"]: x for x in t["options"]}
    n = math.ceil(130 / rep["requests_per_s"])  # sized for the peak
    assert o["dedicated"]["usd_per_month"] == pytest.approx(n * rep["usd_per_hour"] * 730)
    requests = (12 * 20 + 12 * 130) * 3600 * MONTH_DAYS
    assert o["api"]["usd_per_month"] == pytest.approx(requests * (512 * 0.5 + 256 * 1.5) / 1e6)
    assert t["settings"]["min_replicas"] == 0 and t["settings"]["api_basis"] == "--api-price"
    assert len(t["sweep"]) == 81 and t["method"].startswith("estimated")
    PlanResult.model_validate_json(r.output)  # round-trips


@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_cli_table_and_crossover_plot(tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("COLUMNS", "200")  # one line per sentence
    out = tmp_path / f"traffic{suffix}"
    r = _run(["--traffic", "diurnal", "--training-cost", "50000", "--plot", str(out)])
    assert r.exit_code == 0, r.output
    for text in ("Monthly cost by how it is served (estimated)", "dedicated", "autoscaled",
                 "serverless", "api", "crossovers", "training $50,000", "modal"):
        assert text in r.output, text
    body = out.read_bytes()
    if suffix == ".png":
        assert body.startswith(b"\x89PNG")
    else:
        assert b"<svg" in body and b"Traffic economics (estimated)" in body


def test_library_call():
    result = plan("llama-3.1-8b", gpus=["H100-SXM"], schemes=["fp8"],
                  traffic=TrafficConfig(profile="bursty", api_usd_per_m=(0.2, 0.2)))
    econ = result.traffic
    assert econ.replica.scheme == "fp8" and econ.profile.peak == pytest.approx(45)
    assert {o.option for o in econ.options} == {"dedicated", "autoscaled", "serverless",
                                                "api"}


BAD = [  # (file name, content or None, extra args, fragment of the one-line error)
    ("neg.csv", "\n".join(["1"] * 5 + ["-2"] + ["1"] * 18), [], "hour 5 is negative"),
    ("gap.csv", "hour,multiplier\n" + "".join(f"{h},1\n" for h in range(24) if h != 5),
     [], "hour(s) 5 missing"),
    ("short.csv", "\n".join(["1"] * 23), [], "23 hourly values; give 24"),
    ("long.yaml", "hours: [" + ", ".join(["1"] * 25) + "]", [], "25 hourly values"),
    ("words.csv", "1\n2\nmany\n", [], "line 3: a value is not a number"),
    ("header.csv", "when,how much\n1\n", [], "nor a header naming the unit"),
    ("twice.csv", "0,1\n0,2\n", [], "hour 0 is given twice"),
    ("zero.yaml", "hours: [" + ", ".join(["0"] * 24) + "]", [], "every hour is 0"),
    ("unit.yaml", "unit: rps\nhours: [1]", [], "unit must be multiplier or requests_per_s"),
    ("nan.yaml", "hours: [" + ", ".join([".nan"] + ["1"] * 23) + "]", [],
     "hour 0 is not a finite number"),
    ("broken.yaml", "hours: [1, 2\n", [], "not valid YAML"),
    (None, None, ["--traffic", "missing.csv"], "missing.csv does not exist"),
    (None, None, ["--traffic", "weekly"], "expected flat, diurnal, bursty"),
    (None, None, ["--traffic", "ledger:sqlite:///nowhere.db"], "does not exist"),
    (None, None, ["--api-price", "0.2:0.6"], "--api-price needs a demand profile"),
    (None, None, ["--traffic", "flat", "--api-price", "cheap"], "expected IN:OUT"),
    (None, None, ["--traffic", "flat", "--api-price", "-1:2"], "--api-price IN"),
    (None, None, ["--traffic", "flat", "--plot", "out.pdf"], "must end in .png, .svg"),
    (None, None, ["--traffic", "flat", "--min-replicas", "-1"], "--min-replicas must be"),
]


@pytest.mark.parametrize(("name", "content", "args", "fragment"), BAD,
                         ids=[b[0] or " ".join(b[2])[:40] for b in BAD])
def test_bad_profiles_are_one_line_errors(tmp_path, monkeypatch, name, content, args,
                                          fragment):
    monkeypatch.chdir(tmp_path)
    if name is not None:
        (tmp_path / name).write_text(content)
        args = ["--traffic", name, *args]
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(CLI, ["plan", "llama-3.1-8b", "--gpu", "H100-SXM", "--scheme",
                                 "fp8", *args])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.output
    assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
