"""docs/config-reference.md is written from the config's declarations, and kept current."""

from __future__ import annotations

from pathlib import Path

from mlink.deploy.config_reference import reference_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_the_committed_reference_is_current() -> None:
    assert PAGE.read_text() == reference_markdown(), (
        "regenerate: python -m mlink.deploy.config_reference > docs/config-reference.md"
    )


def test_it_names_every_section_and_the_defaults_users_miss() -> None:
    page = reference_markdown()
    for section in ("source", "models[]", "budget", "links", "topics", "runtime", "limits"):
        assert f"## `{section}`" in page, section
    assert "| `links.retrain_every` | int | `0` |" in page  # train once, unless set
    assert "`models[].timeout_s` | float | `60.0`" in page
