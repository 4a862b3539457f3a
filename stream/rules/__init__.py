"""Early-warning rules: pure code that turns a node's readings into level changes.

Five node rule types, each a small frozen class with its memory in a
`RuleState` per node: thresholds with hysteresis and minimum duration
(`threshold`), rate of rise (`rate`), forecast to threshold (`forecast`),
several conditions together (`composite`) and the online detectors' anomaly
score against levels (`anomaly`). A sixth, `area`, counts the levels node
rules give the nodes of a grid, street or district (`AreaState` per area).
Rules come from a TOML file (`stream.rules.file`); `DEFAULT_RULES` are the
built-in ones.
"""

from __future__ import annotations

from stream.rules.anomaly import AnomalyRule, scorer_for
from stream.rules.area import AnyRule, AreaRule, AreaState
from stream.rules.base import (
    EVERY_NODE,
    LevelThresholds,
    Outcome,
    Rule,
    RuleState,
    Selector,
    Steps,
)
from stream.rules.composite import CompositeRule, Condition
from stream.rules.file import default_rules, load_rules
from stream.rules.forecast import ForecastRule
from stream.rules.rate import RateRule
from stream.rules.threshold import ThresholdRule

__all__ = [
    "DEFAULT_RULES",
    "EVERY_NODE",
    "AnomalyRule",
    "AnyRule",
    "AreaRule",
    "AreaState",
    "CompositeRule",
    "Condition",
    "ForecastRule",
    "LevelThresholds",
    "Outcome",
    "RateRule",
    "Rule",
    "RuleState",
    "Selector",
    "Steps",
    "ThresholdRule",
    "default_rules",
    "load_rules",
    "scorer_for",
]

#: The built-in rule set (stream/rules/default.toml).
DEFAULT_RULES: tuple[AnyRule, ...] = default_rules()
