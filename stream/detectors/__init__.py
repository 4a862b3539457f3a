"""Online anomaly detectors: one series in, a p-value per reading out. Pure: no I/O.

Every detector is a frozen dataclass of parameters with the same four methods:

- `new_state()`: a fresh `DetectorState` (a msgspec struct; `encode_state`
  and `decode_state` turn it into the bytes a faust table holds);
- `score_one(state, x, t_ms) -> p`: the p-value of reading x under what the
  state has learned (1.0 ordinary, tiny anomalous); it changes nothing, and
  returns 1.0 until `warm_up` readings have been learned;
- `learn_one(state, x, t_ms)`: learn the reading, O(1) time, bounded memory;
- `score_learn_many(state, xs, ts_ms) -> p array`: the vectorised replay,
  equal to `score_one` then `learn_one` for each reading in turn.

Values must be finite: NaN or infinity raises ValueError (the contract's
validation rules them out, so one here is a bug upstream). Users see
`anomaly_score(p) = 1 - p`; `AnomalyScorer` combines several detectors on
one metric and `default_scorer(kind)` picks them for each sensor kind.

>>> import random
>>> rng = random.Random(7)
>>> detector = RobustBaseline()
>>> state = detector.new_state()
>>> for i in range(200):
...     detector.learn_one(state, 20.0 + rng.gauss(0.0, 0.5), i * 600_000)
>>> data = encode_state(state)
>>> restored = decode_state(detector, data)
>>> p = detector.score_one(restored, 23.5, 200 * 600_000)
>>> round(anomaly_score(p), 3), len(data) < 600
(1.0, True)
"""

from stream.detectors.base import (
    Detector,
    DetectorState,
    anomaly_score,
    decode_state,
    encode_state,
)
from stream.detectors.combine import (
    KIND_DEFAULTS,
    AnomalyScorer,
    Scored,
    ScoredSeries,
    ScorerState,
    bonferroni,
    default_scorer,
)
from stream.detectors.cusum_change import CusumChange, CusumChangeState
from stream.detectors.dropout import Dropout, DropoutState
from stream.detectors.ewma_baseline import EwmaBaseline, EwmaBaselineState
from stream.detectors.flat_line import FlatLine, FlatLineState
from stream.detectors.rate_of_change import RateOfChange, RateOfChangeState
from stream.detectors.robust_baseline import RobustBaseline, RobustBaselineState
from stream.detectors.seasonal_baseline import SeasonalBaseline, SeasonalBaselineState
from stream.detectors.spike import Spike, SpikeState

__all__ = [
    "KIND_DEFAULTS",
    "AnomalyScorer",
    "CusumChange",
    "CusumChangeState",
    "Detector",
    "DetectorState",
    "Dropout",
    "DropoutState",
    "EwmaBaseline",
    "EwmaBaselineState",
    "FlatLine",
    "FlatLineState",
    "RateOfChange",
    "RateOfChangeState",
    "RobustBaseline",
    "RobustBaselineState",
    "Scored",
    "ScoredSeries",
    "ScorerState",
    "SeasonalBaseline",
    "SeasonalBaselineState",
    "Spike",
    "SpikeState",
    "anomaly_score",
    "bonferroni",
    "decode_state",
    "default_scorer",
    "encode_state",
]
