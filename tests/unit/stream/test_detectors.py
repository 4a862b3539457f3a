"""Online anomaly detectors: one conformance suite over every detector and the scorer,
vectorised replay equal to the per-reading loop, calibration on noise, and detection of
each detector's own anomaly."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityvitals.kinds import Kind
from stream.detectors import (
    AnomalyScorer,
    CusumChange,
    Dropout,
    EwmaBaseline,
    FlatLine,
    RateOfChange,
    RobustBaseline,
    Scored,
    SeasonalBaseline,
    Spike,
    anomaly_score,
    bonferroni,
    decode_state,
    default_scorer,
    encode_state,
)

TEN_MIN = 600_000
START = 1_764_028_800_000  # 2025-11-25 00:00 UTC, a Tuesday


def p_of(result: Any) -> float:
    """The p-value, whether a detector (a float) or the scorer (a Scored) answered."""
    return result.p if isinstance(result, Scored) else float(result)


def many_p(detector: Any, state: Any, xs: Any, ts: Any) -> np.ndarray:
    result = detector.score_learn_many(state, xs, ts)
    return result if isinstance(result, np.ndarray) else result.p


def loop_p(detector: Any, state: Any, xs: Any, ts: Any) -> np.ndarray:
    out = []
    for x, t in zip(np.asarray(xs).tolist(), np.asarray(ts).tolist(), strict=True):
        out.append(p_of(detector.score_one(state, x, t)))
        detector.learn_one(state, x, t)
    return np.array(out, dtype=np.float64)


def copy_state(detector: Any, state: Any) -> Any:
    return decode_state(detector, encode_state(state))


def assert_same_state(a: Any, b: Any) -> None:
    """States equal: integers and None exactly, floats to the vectorised tolerance."""

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, list):
            assert isinstance(y, list), path
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{path}[{i}]")
        elif isinstance(x, float) or isinstance(y, float):
            assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), f"{path}: {x} != {y}"
        else:
            assert x == y, f"{path}: {x!r} != {y!r}"

    walk(msgspec.to_builtins(a), msgspec.to_builtins(b), "state")


def noisy_series(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Noise with a few exact repeats, a spike, a step, and gaps in the timestamps."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(10.0, 1.0, n)
    xs[rng.random(n) < 0.05] = 10.0
    xs[n // 3] += 15.0
    xs[n // 2 :] += 3.0
    steps = np.full(n, TEN_MIN)
    steps[rng.random(n) < 0.02] = 4 * TEN_MIN
    return xs, START + np.cumsum(steps)


# --- conformance -------------------------------------------------------------

#: Every detector at its defaults, and the scorers; the byte bound is documented in
#: docs/detectors.md (state size after 10 000 readings of noisy_series).
CONFORMING: dict[str, tuple[Callable[[], Any], int]] = {
    "RobustBaseline": (RobustBaseline, 9 * 64 + 16),
    "EwmaBaseline": (EwmaBaseline, 32),
    "SeasonalBaseline": (SeasonalBaseline, 19 * 168 + 32),
    "CusumChange": (CusumChange, 48),
    "RateOfChange": (RateOfChange, 48),
    "FlatLine": (FlatLine, 40),
    "Dropout": (Dropout, 5 * 16 + 32),
    "Spike": (Spike, 9 * 64 + 24),
    "scorer:water_level": (lambda: default_scorer("water_level"), 900),
    "scorer:crowd": (lambda: default_scorer("crowd"), 3500),
    "scorer:smoke": (lambda: default_scorer("smoke"), 850),
    "scorer:manhole": (lambda: default_scorer("manhole"), 1450),
    "scorer:generic": (lambda: default_scorer("generic"), 1500),
}
conforming = pytest.mark.parametrize("name", list(CONFORMING))


@conforming
def test_round_trip_mid_stream_gives_identical_scores(name):
    """Encoding the state to msgpack and back mid-stream changes none of the later scores:
    what a faust table stores is all there is to the state."""
    detector = CONFORMING[name][0]()
    xs, ts = noisy_series(3000)
    state = detector.new_state()
    loop_p(detector, state, xs[:2000], ts[:2000])
    restored = decode_state(detector, encode_state(state))
    assert restored == state
    np.testing.assert_array_equal(
        loop_p(detector, restored, xs[2000:], ts[2000:]),
        loop_p(detector, state, xs[2000:], ts[2000:]),
    )


@conforming
def test_same_input_gives_same_output(name):
    """Two fresh states fed the same readings score them identically, in both paths."""
    xs, ts = noisy_series(1500)
    runs = [
        many_p(CONFORMING[name][0](), CONFORMING[name][0]().new_state(), xs, ts) for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    detector = CONFORMING[name][0]()
    np.testing.assert_array_equal(
        loop_p(detector, detector.new_state(), xs[:300], ts[:300]),
        loop_p(detector, detector.new_state(), xs[:300], ts[:300]),
    )


@conforming
def test_warm_up_scores_one(name):
    """Until warm-up is over every reading scores 1.0, however wild."""
    detector = CONFORMING[name][0]()
    state = detector.new_state()
    wild = [0.0, 1e3, -1e3, 5.0, 5.0, 5.0, 5.0, 1e3]
    for i, x in enumerate(wild):
        assert p_of(detector.score_one(state, x, START + i * 17 * TEN_MIN)) == 1.0
        detector.learn_one(state, x, START + i * 17 * TEN_MIN)


@conforming
def test_score_one_does_not_change_the_state(name):
    """score_one is a question, not a lesson: the encoded state is the same before and after."""
    detector = CONFORMING[name][0]()
    xs, ts = noisy_series(600)
    state = detector.new_state()
    detector.score_learn_many(state, xs, ts)
    before = encode_state(state)
    for x in (10.0, float(xs[-1]), 1e3, -1e3):
        detector.score_one(state, x, int(ts[-1]) + TEN_MIN)
        detector.score_one(state, x, int(ts[-1]) + 7 * TEN_MIN)
    assert encode_state(state) == before


@conforming
def test_detector_pickles(name):
    """A detector is plain parameters: it pickles and compares equal to its copy."""
    detector = CONFORMING[name][0]()
    clone = pickle.loads(pickle.dumps(detector))  # noqa: S301 (our own bytes)
    assert clone == detector
    xs, ts = noisy_series(400)
    np.testing.assert_array_equal(
        many_p(clone, clone.new_state(), xs, ts), many_p(detector, detector.new_state(), xs, ts)
    )


@conforming
def test_state_size_is_bounded(name):
    """After 10 000 readings the encoded state stays under the documented byte bound."""
    detector, bound = CONFORMING[name][0](), CONFORMING[name][1]
    xs, ts = noisy_series(10_000)
    state = detector.new_state()
    detector.score_learn_many(state, xs, ts)
    assert len(encode_state(state)) <= bound


@conforming
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_a_programming_error(name, bad):
    """NaN and infinity raise ValueError on every path and leave the state untouched."""
    detector = CONFORMING[name][0]()
    xs, ts = noisy_series(200)
    state = detector.new_state()
    detector.score_learn_many(state, xs, ts)
    before = encode_state(state)
    with pytest.raises(ValueError, match="finite"):
        detector.score_one(state, bad, int(ts[-1]) + TEN_MIN)
    with pytest.raises(ValueError, match="finite"):
        detector.learn_one(state, bad, int(ts[-1]) + TEN_MIN)
    with pytest.raises(ValueError, match="finite"):
        detector.score_learn_many(state, [1.0, bad], [int(ts[-1]) + TEN_MIN, int(ts[-1]) + 2])
    assert encode_state(state) == before


@conforming
def test_many_rejects_mismatched_arrays(name):
    """Arrays of different lengths or float timestamps are refused, not silently cast."""
    detector = CONFORMING[name][0]()
    with pytest.raises(ValueError, match="same length"):
        detector.score_learn_many(detector.new_state(), [1.0, 2.0], [START])
    with pytest.raises(ValueError, match="integers"):
        detector.score_learn_many(detector.new_state(), [1.0], [1.5])


@pytest.mark.parametrize(
    ("factory", "parameter"),
    [
        (lambda: RobustBaseline(window=2), "window"),
        (lambda: RobustBaseline(min_scale=0.0), "min_scale"),
        (lambda: RobustBaseline(window=10, warm_up=11), "warm_up"),
        (lambda: EwmaBaseline(alpha=1.0), "alpha"),
        (lambda: EwmaBaseline(warm_up=1), "warm_up"),
        (lambda: SeasonalBaseline(bin_minutes=11), "bin_minutes"),
        (lambda: SeasonalBaseline(period="month"), "period"),
        (lambda: SeasonalBaseline(utc_offset_minutes=2000), "utc_offset_minutes"),
        (lambda: CusumChange(k=0.0), "k"),
        (lambda: CusumChange(z_cap=0.4), "z_cap"),
        (lambda: RateOfChange(direction="up"), "direction"),
        (lambda: FlatLine(tolerance=-1.0), "tolerance"),
        (lambda: FlatLine(max_q=1.0), "max_q"),
        (lambda: FlatLine(min_q=0.5, max_q=0.4), "min_q"),
        (lambda: Dropout(min_pi=0.0), "min_pi"),
        (lambda: Spike(window=8, warm_up=9), "warm_up"),
        (lambda: AnomalyScorer((("a", Spike()), ("a", FlatLine()))), "names"),
        (lambda: AnomalyScorer(()), "detectors"),
        (lambda: default_scorer("volcano"), "kind"),
    ],
)
def test_bad_parameters_name_themselves(factory, parameter):
    """A bad parameter is refused at construction with a message that names it."""
    with pytest.raises(ValueError, match=parameter):
        factory()


# --- vectorised == loop ------------------------------------------------------

values = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.integers(-3, 3).map(float),
)


@st.composite
def segment(draw: st.DrawFn) -> list[float]:
    kind = draw(st.sampled_from(["any", "constant", "noise", "jump"]))
    if kind == "any":
        return draw(st.lists(values, min_size=1, max_size=12))
    if kind == "constant":
        return [draw(values)] * draw(st.integers(1, 25))
    level = draw(st.floats(-100, 100))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    noise = (level + rng.normal(0.0, draw(st.floats(0.01, 5.0)), draw(st.integers(1, 40)))).tolist()
    if kind == "jump":
        noise[0] += draw(st.sampled_from([-500.0, 200.0, 1000.0]))
    return noise


steps = st.one_of(
    st.just(TEN_MIN),
    st.integers(TEN_MIN - 10_000, TEN_MIN + 10_000),
    st.sampled_from([0, -TEN_MIN, 1, 3 * TEN_MIN, 7 * TEN_MIN, 144 * TEN_MIN]),
    st.integers(1, 10**8),
)


@st.composite
def series(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    xs = [x for part in draw(st.lists(segment(), min_size=1, max_size=10)) for x in part]
    gaps = draw(st.lists(steps, min_size=len(xs), max_size=len(xs)))
    ts = START + np.cumsum(np.array(gaps, dtype=np.int64))
    split = draw(st.integers(0, len(xs)))
    return np.array(xs), ts, split


#: Small windows and warm-ups so that short generated series get past warm-up,
#: the defaults, and a scorer built of the small ones.
_SMALL: dict[str, Any] = {
    "robust": RobustBaseline(window=7, warm_up=3),
    "robust-even": RobustBaseline(window=8, warm_up=8, min_scale=0.5),
    "ewma": EwmaBaseline(alpha=0.2, warm_up=3),
    "seasonal": SeasonalBaseline(period="day", bin_minutes=360, alpha=0.3, warm_up=2),
    "seasonal-week": SeasonalBaseline(bin_minutes=720, utc_offset_minutes=-300, warm_up=2),
    "cusum": CusumChange(alpha=0.1, k=0.25, warm_up=3),
    "rate": RateOfChange(alpha=0.2, warm_up=3),
    "rate-rise": RateOfChange(alpha=0.3, warm_up=2, direction="rise"),
    "rate-fall": RateOfChange(alpha=0.3, warm_up=2, direction="fall"),
    "flat": FlatLine(alpha=0.2, warm_up=2),
    "flat-tolerant": FlatLine(tolerance=0.5, alpha=0.3, warm_up=2, min_q=0.1, max_q=0.9),
    "dropout": Dropout(window=5, warm_up=2, alpha=0.3),
    "spike": Spike(window=6, warm_up=3),
}
REPLAYED: dict[str, Any] = {
    **_SMALL,
    "scorer-small": AnomalyScorer(tuple(_SMALL.items())),
    **{f"default:{name}": factory() for name, (factory, _) in CONFORMING.items()},
}


@pytest.mark.parametrize("name", list(REPLAYED))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=series())
def test_vectorised_replay_equals_the_loop(name, data):
    """score_learn_many returns what score_one-then-learn_one returns reading by reading,
    and leaves the same state, from a fresh state and from one learned mid-stream
    (constant runs, big jumps, duplicate, reordered and irregular timestamps, gaps)."""
    detector = REPLAYED[name]
    xs, ts, split = data
    state = detector.new_state()
    loop_p(detector, state, xs[:split], ts[:split])
    fresh = detector.new_state()
    for start, s in ((0, fresh), (split, state)):
        by_loop, by_many = copy_state(detector, s), copy_state(detector, s)
        expected = loop_p(detector, by_loop, xs[start:], ts[start:])
        got = detector.score_learn_many(by_many, xs[start:], ts[start:])
        if isinstance(got, np.ndarray):
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        else:
            np.testing.assert_allclose(got.p, expected, rtol=1e-9, atol=1e-12)
        assert_same_state(by_many, by_loop)


def test_scorer_many_matches_its_parts():
    """The scorer's arrays hold each detector's own p-values, and p is their Bonferroni min."""
    scorer = default_scorer("generic")
    xs, ts = noisy_series(2000)
    result = scorer.score_learn_many(scorer.new_state(), xs, ts)
    for name, detector in scorer.detectors:
        np.testing.assert_array_equal(
            result.part(name), many_p(detector, detector.new_state(), xs, ts)
        )
    np.testing.assert_array_equal(
        result.p, np.minimum(1.0, len(scorer.names) * result.parts.min(axis=1))
    )
    np.testing.assert_array_equal(result.score, 1.0 - result.p)


# --- calibration -------------------------------------------------------------

GAUSSIAN: dict[str, Any] = {
    "RobustBaseline": RobustBaseline(),
    "EwmaBaseline": EwmaBaseline(),
    "SeasonalBaseline": SeasonalBaseline(),
    "CusumChange": CusumChange(),
    "RateOfChange": RateOfChange(),
    "RateOfChange(rise)": RateOfChange(direction="rise"),
    "Spike": Spike(),
}


def gaussian_noise(n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(7).normal(0.0, 1.0, n), START + np.arange(n) * TEN_MIN


@pytest.mark.parametrize("name", list(GAUSSIAN))
def test_gaussian_detectors_are_calibrated_on_noise(name):
    """On 20 000 readings of Gaussian noise, p < 0.01 for between 0.3 % and 2 % of them:
    a p-value that means what it says (about 1 %), neither deaf nor trigger-happy."""
    detector = GAUSSIAN[name]
    xs, ts = gaussian_noise()
    p = detector.score_learn_many(detector.new_state(), xs, ts)
    assert 0.003 <= float(np.mean(p < 0.01)) <= 0.02


@pytest.mark.parametrize("detector", [FlatLine(), Dropout()], ids=["FlatLine", "Dropout"])
def test_data_quality_detectors_stay_quiet_on_clean_noise(detector):
    """Noise never repeats and regular readings never miss: not one p below 0.01."""
    xs, ts = gaussian_noise()
    p = detector.score_learn_many(detector.new_state(), xs, ts)
    assert float(p.min()) >= 0.01


@pytest.mark.parametrize("kind", ["water_level", "crowd", "smoke", "manhole", "generic"])
def test_combined_score_is_calibrated_on_noise(kind):
    """Bonferroni keeps the combined score honest despite dependent detectors:
    score > 0.99 for at most 1.5 % of pure-noise readings."""
    scorer = default_scorer(kind)
    xs, ts = gaussian_noise()
    result = scorer.score_learn_many(scorer.new_state(), xs, ts)
    assert float(np.mean(result.score > 0.99)) <= 0.015


# --- detection ---------------------------------------------------------------


def test_cusum_finds_a_level_shift_smaller_than_the_noise():
    """A shift of 1.5 sd, which no single reading betrays, reaches p < 1e-4 within 15
    readings, while the 1000 readings before it never went below 1e-4; the EWMA baseline,
    which judges each reading alone, stays above 1e-4 throughout."""
    rng = np.random.default_rng(7)
    xs = np.concatenate([rng.normal(0.0, 1.0, 1000), rng.normal(1.5, 1.0, 15)])
    ts = START + np.arange(len(xs)) * TEN_MIN
    detector = CusumChange()
    p = detector.score_learn_many(detector.new_state(), xs, ts)
    assert float(p[:1000].min()) > 1e-4
    assert float(p[1000:].min()) < 1e-4
    ewma = EwmaBaseline()
    assert float(ewma.score_learn_many(ewma.new_state(), xs, ts)[1000:].min()) > 1e-4


def test_cusum_drains_after_the_baseline_absorbs_a_shift():
    """No reset needed: a permanent 3 sd shift alarms at once, and 1000 readings later the
    alarm rate is back to that of noise, because the baseline moved and the drift -k
    emptied the sums."""
    rng = np.random.default_rng(7)
    xs = np.concatenate([rng.normal(0.0, 1.0, 500), rng.normal(3.0, 1.0, 1500)])
    detector = CusumChange()
    p = detector.score_learn_many(detector.new_state(), xs, START + np.arange(2000) * TEN_MIN)
    assert float(p[500:520].min()) < 1e-6
    assert float(np.mean(p[1500:] < 0.01)) < 0.02


def test_rate_of_change_finds_a_fast_rise():
    """Water rising 3 cm per reading on a street whose depth wobbles by 0.3 cm is p < 1e-4
    on the first rising reading; the same rate downwards is ordinary for direction='rise'."""
    rng = np.random.default_rng(7)
    depth = 2.0 + rng.normal(0.0, 0.3, 500)
    ts = START + np.arange(503) * TEN_MIN
    rising = np.concatenate([depth, depth[-1] + np.array([3.0, 6.0, 9.0])])
    falling = np.concatenate([depth, depth[-1] - np.array([3.0, 6.0, 9.0])])
    detector = RateOfChange(direction="rise")
    assert float(detector.score_learn_many(detector.new_state(), rising, ts)[500]) < 1e-4
    assert float(detector.score_learn_many(detector.new_state(), falling, ts)[500:].min()) > 0.5


def test_flat_line_finds_a_stuck_sensor():
    """A noisy sensor that freezes on one value is p < 1e-4 by the fourth repeat."""
    rng = np.random.default_rng(7)
    xs = np.concatenate([rng.normal(40.0, 2.0, 500), np.full(10, 41.3)])
    detector = FlatLine()
    p = detector.score_learn_many(detector.new_state(), xs, START + np.arange(510) * TEN_MIN)
    assert float(p[:501].min()) == 1.0
    assert float(p[504]) < 1e-4
    assert float(p[504:].max()) < 1e-4


def test_flat_line_stays_quiet_on_a_dry_road():
    """A road dry for days at a time reads exactly 0 cm for hundreds of readings. Once it
    has seen a couple of dry spells it has learned that runs of 0 go on, and a new dry spell
    of the usual length (or twice it) stays p > 0.01 from start to end."""
    rng = np.random.default_rng(7)
    parts: list[np.ndarray] = []
    for _ in range(4):  # four rain events, each followed by a ~3-day dry spell
        parts.append(np.abs(rng.normal(4.0, 2.0, 60)))
        parts.append(np.zeros(int(rng.integers(350, 450))))
    history = np.concatenate(parts)
    rain = np.abs(rng.normal(4.0, 2.0, 60))
    spell = np.concatenate([rain, np.zeros(900)])
    detector = FlatLine()
    state = detector.new_state()
    detector.score_learn_many(state, history, START + np.arange(len(history)) * TEN_MIN)
    later = START + (len(history) + np.arange(len(spell))) * TEN_MIN
    p = detector.score_learn_many(state, spell, later)
    assert float(p.min()) > 0.01


def test_dropout_finds_six_missed_readings():
    """Six missed readings on a link that never drops: p < 1e-4 on the reading after the gap;
    one missed reading is only min_pi (0.05), nowhere near alarming."""
    rng = np.random.default_rng(7)
    ts = START + np.cumsum(rng.integers(TEN_MIN - 5000, TEN_MIN + 5000, 300))
    detector = Dropout()
    state = detector.new_state()
    p = detector.score_learn_many(state, np.zeros(300), ts)
    assert float(p.min()) == 1.0
    last = int(ts[-1])
    assert detector.score_one(state, 0.0, last + 7 * TEN_MIN) < 1e-4
    assert detector.score_one(state, 0.0, last + 2 * TEN_MIN) == pytest.approx(0.05)


def test_dropout_learns_a_lossy_link():
    """A link that misses a reading one gap in three learns pi ~ 0.3: a single miss is
    ordinary there, six in a row still stand out."""
    rng = np.random.default_rng(7)
    steps = np.where(rng.random(600) < 0.3, 2 * TEN_MIN, TEN_MIN)
    ts = START + np.cumsum(steps)
    detector = Dropout()
    state = detector.new_state()
    detector.score_learn_many(state, np.zeros(600), ts)
    last = int(ts[-1])
    assert detector.score_one(state, 0.0, last + 2 * TEN_MIN) > 0.1
    assert detector.score_one(state, 0.0, last + 7 * TEN_MIN) < 1e-2


def test_spike_finds_a_single_spike():
    """One reading 10 sd off (an echo off a lorry) is p < 1e-4; the one before it is not."""
    rng = np.random.default_rng(7)
    xs = rng.normal(12.0, 0.4, 400)
    xs[300] += 4.0
    detector = Spike()
    p = detector.score_learn_many(detector.new_state(), xs, START + np.arange(400) * TEN_MIN)
    assert float(p[300]) < 1e-4
    assert float(p[299]) > 0.01


DAY_READINGS = 144
WEEK_READINGS = 7 * DAY_READINGS
MONDAY = START - 86_400_000  # 2025-11-24 00:00 UTC


def crowd_density(weeks: int) -> tuple[np.ndarray, np.ndarray]:
    """10-minute crowd density on a square from a Monday: about 0.3 persons/m2, and a peak
    of 2.5 on Saturday and Sunday afternoons (13:00-18:00)."""
    rng = np.random.default_rng(7)
    i = np.arange(weeks * WEEK_READINGS)
    day, minute = (i // DAY_READINGS) % 7, (i % DAY_READINGS) * 10
    peak = (day >= 5) & (minute >= 13 * 60) & (minute < 18 * 60)
    xs = np.where(peak, 2.5, 0.3) + rng.normal(0.0, 0.1, len(i)) * np.where(peak, 2.0, 1.0)
    return xs, MONDAY + i * TEN_MIN


def at(week: int, day: int, hour: int) -> int:
    return week * WEEK_READINGS + day * DAY_READINGS + hour * 6


def test_seasonal_learns_the_weekend_peak_and_flags_a_3am_surge():
    """After three weeks the weekend peak is ordinary for the seasonal baseline: in the
    fourth, its readings are p < 0.01 no more often than noise is (1 %), and the peak's usual
    density scores p > 0.5 on the Saturday of week five, while the same density at 3 am on
    the Tuesday is p < 1e-4. A plain EWMA calls the peak's first reading anomalous: that is
    the difference seasonality makes."""
    xs, ts = crowd_density(4)
    seasonal, plain = SeasonalBaseline(), EwmaBaseline()
    s_state = seasonal.new_state()
    p_seasonal = seasonal.score_learn_many(s_state, xs, ts)
    p_plain = plain.score_learn_many(plain.new_state(), xs, ts)
    weekend = np.r_[at(3, 5, 13) : at(3, 5, 18), at(3, 6, 13) : at(3, 6, 18)]
    assert int(np.sum(p_seasonal[weekend] < 0.01)) <= 1
    assert float(p_plain[at(3, 5, 13)]) < 1e-4
    week_five = MONDAY + 4 * WEEK_READINGS * TEN_MIN
    saturday_15h = week_five + at(0, 5, 15) * TEN_MIN
    tuesday_3am = week_five + at(0, 1, 3) * TEN_MIN
    assert seasonal.bin_of(saturday_15h) == 5 * 24 + 15
    assert seasonal.score_one(s_state, 2.5, saturday_15h) > 0.5
    assert seasonal.score_one(s_state, 2.5, tuesday_3am) < 1e-4
    assert seasonal.score_one(s_state, 0.3, tuesday_3am) > 0.01


def test_crowd_scorer_keeps_the_peak_quiet_and_flags_the_surge():
    """The default crowd scorer, over five weeks, scores at most one reading of the fifth
    weekend's peak above 0.99, and a surge at 3 am on the Tuesday after above 0.999."""
    xs, ts = crowd_density(5)
    scorer = default_scorer(Kind.CROWD)
    state = scorer.new_state()
    quiet_until = at(5, 1, 3)  # readings as usual up to Tuesday 03:00 of week six
    more_xs = 0.3 + np.random.default_rng(8).normal(0.0, 0.1, quiet_until - len(xs))
    more_ts = MONDAY + np.arange(len(xs), quiet_until) * TEN_MIN
    result = scorer.score_learn_many(
        state, np.concatenate([xs, more_xs]), np.concatenate([ts, more_ts])
    )
    weekend = np.r_[at(4, 5, 13) : at(4, 5, 18), at(4, 6, 13) : at(4, 6, 18)]
    assert int(np.sum(result.score[weekend] > 0.99)) <= 1
    surge = scorer.score_one(state, 2.5, MONDAY + quiet_until * TEN_MIN)
    assert surge.score > 0.999
    assert surge.worst == "seasonal"


# --- small things ------------------------------------------------------------


def test_anomaly_score_and_bonferroni():
    """The score is 1 - p; Bonferroni multiplies the smallest p by the count, capped at 1."""
    assert anomaly_score(0.01) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="probability"):
        anomaly_score(1.5)
    assert bonferroni([0.2, 0.01, 0.5, 0.9]) == pytest.approx(0.04)
    assert bonferroni([0.9, 0.5]) == 1.0


def test_scorer_refuses_a_state_from_another_scorer():
    """A state built for one detector list is refused by a scorer with another."""
    crowd, smoke = default_scorer("crowd"), default_scorer("smoke")
    with pytest.raises(ValueError, match="another scorer"):
        smoke.score_one(crowd.new_state(), 1.0, START)


def test_scored_names_the_worst_detector():
    """A Scored result reports each detector's p-value and which one was most surprised."""
    scorer = AnomalyScorer.of({"a": EwmaBaseline(warm_up=2), "b": Spike(warm_up=3)})
    state = scorer.new_state()
    for i, x in enumerate([1.0, 1.1, 0.9, 1.0, 1.05, 0.95]):
        scorer.learn_one(state, x, START + i * TEN_MIN)
    result = scorer.score_one(state, 9.0, START + 6 * TEN_MIN)
    assert set(result.by_name()) == {"a", "b"}
    assert result.p == bonferroni(list(result.parts))
    assert result.worst == min(result.by_name(), key=result.by_name().__getitem__)


def test_seasonal_bins_follow_the_local_clock():
    """Bin 0 is Monday 00:00 local time: a UTC+8 city's Monday starts at Sunday 16:00 UTC."""
    weekly = SeasonalBaseline()
    monday_utc = MONDAY
    assert weekly.bin_of(monday_utc) == 0
    assert weekly.bin_of(monday_utc - 1) == 167
    shanghai = SeasonalBaseline(utc_offset_minutes=480)
    assert shanghai.bin_of(monday_utc - 8 * 3_600_000) == 0
    assert SeasonalBaseline(period="day", bin_minutes=30).bin_of(START + 90 * 60_000) == 3


@pytest.mark.parametrize("detector", [RateOfChange(warm_up=2), Dropout(warm_up=2)])
def test_out_of_order_readings_are_ignored_by_time_based_detectors(detector):
    """A reading not later than the last one has no interval: p = 1.0 and nothing learned."""
    state = detector.new_state()
    for i in range(20):
        detector.learn_one(state, float(i % 3), START + i * TEN_MIN)
    before = encode_state(state)
    for t in (START + 19 * TEN_MIN, START):
        assert detector.score_one(state, 1e3, t) == 1.0
        detector.learn_one(state, 1e3, t)
    assert encode_state(state) == before


def test_decode_refuses_another_detectors_bytes():
    """Bytes are tagged with their detector kind, so a mix-up fails loudly."""
    data = encode_state(Spike().new_state())
    with pytest.raises(msgspec.ValidationError):
        decode_state(FlatLine(), data)
