"""The README's config reference is the schema's."""

from pathlib import Path

from paravideo.config_docs import embed_reference


def test_readme_config_reference_is_current():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    assert embed_reference(text) == text, "run: python -m paravideo.config_docs --write README.md"
