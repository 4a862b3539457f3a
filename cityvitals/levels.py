"""Warning levels, as city emergency practice names them.

Four levels, from blue (IV, the least) to red (I, the gravest). `NONE` means
"no warning" and is what a cleared warning falls back to.

>>> Level.RED > Level.ORANGE
True
>>> Level.YELLOW.roman, Level.YELLOW.label
('III', 'yellow')
>>> Level.parse("orange") is Level.parse("II") is Level.ORANGE
True
"""

from __future__ import annotations

from enum import IntEnum


class Level(IntEnum):
    NONE = 0
    BLUE = 1
    YELLOW = 2
    ORANGE = 3
    RED = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def roman(self) -> str:
        return _ROMAN[self]

    @classmethod
    def parse(cls, text: str) -> Level:
        """Accept a colour name or its Roman numeral, in any case."""
        key = text.strip().upper()
        for level in cls:
            if key in (level.name, _ROMAN[level]):
                return level
        raise ValueError(f"unknown warning level {text!r}; expected blue, yellow, orange or red")


_ROMAN = {
    Level.NONE: "-",
    Level.BLUE: "IV",
    Level.YELLOW: "III",
    Level.ORANGE: "II",
    Level.RED: "I",
}

WARNING_LEVELS: tuple[Level, ...] = (Level.BLUE, Level.YELLOW, Level.ORANGE, Level.RED)
