"""The early-warning evaluation suite: labelled scenarios, scored for precision,
recall, lead time and false alarms (docs/evaluation.md).

`scenarios` generates seeded, labelled series of Readings; `scoring` runs a
rule set over them and scores the warnings; `plots` (matplotlib, imported
only when called) draws them for the docs. `bench/evaluate.py` prints the
full table; `tests/unit/stream/test_evaluation.py` asserts its floors.
"""

from stream.evaluation.scenarios import (
    SCENARIOS,
    Case,
    Counted,
    Event,
    crowd,
    drift,
    gas_leak,
    quiet,
    rainstorm,
    spikes,
    stuck,
)
from stream.evaluation.scoring import (
    CaseScore,
    DetectorScore,
    Episode,
    Summary,
    detector_hits,
    episodes,
    evaluate,
    replay,
    rule_types,
    score_case,
    summarise,
)

__all__ = [
    "SCENARIOS",
    "Case",
    "CaseScore",
    "Counted",
    "DetectorScore",
    "Episode",
    "Event",
    "Summary",
    "crowd",
    "detector_hits",
    "drift",
    "episodes",
    "evaluate",
    "gas_leak",
    "quiet",
    "rainstorm",
    "replay",
    "rule_types",
    "score_case",
    "spikes",
    "stuck",
    "summarise",
]
