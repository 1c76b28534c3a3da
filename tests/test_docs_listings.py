"""docs/DESIGN.md's graph listings are what the code produces now (regenerate: python docs/listings.py)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "docs" / "listings.py"


def _listings_module():
    spec = importlib.util.spec_from_file_location("docs_listings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_design_listings_are_current():
    listings = _listings_module()
    text = listings.DESIGN.read_text(encoding="utf-8")
    assert len(listings.BLOCK.findall(text)) == 8
    assert listings.render(text, listings.listings()) == text, "run python docs/listings.py and commit DESIGN.md"


def test_a_stale_listing_is_caught():
    listings = _listings_module()
    stale = "<!-- listing: captured -->\n```\nold\n```\n<!-- /listing -->\n"
    assert listings.render(stale, {"captured": "new\n"}) == stale.replace("old", "new")
    with pytest.raises(KeyError, match="unknown"):
        listings.render(stale.replace("captured", "unknown"), {})
