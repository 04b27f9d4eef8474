"""The one modality vocabulary shared by the manifest, ``--modality``, store names and heads."""

from __future__ import annotations

import enum


class Modality(str, enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"

    def __str__(self) -> str:  # so f-strings and click print "text", not "Modality.TEXT"
        return self.value

    @classmethod
    def parse(cls, value: "str | Modality") -> "Modality":
        if isinstance(value, Modality):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"unknown modality {value!r}; known: {', '.join(NAMES)}") from None

    @classmethod
    def parse_list(cls, value: "str | list[str] | tuple[str, ...]") -> list["Modality"]:
        """Parse ``"text,image"`` or a list; order is kept, duplicates are an error."""
        items = value.split(",") if isinstance(value, str) else list(value)
        mods = [cls.parse(v) for v in items if str(v).strip()]
        if len(set(mods)) != len(mods):
            raise ValueError(f"modality listed twice in {value!r}")
        return mods


NAMES: tuple[str, ...] = tuple(m.value for m in Modality)
