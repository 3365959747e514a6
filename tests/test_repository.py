"""What a user and their tools read about the project agrees with itself: the license is the same in pyproject,
LICENSE and CITATION.cff, and CITATION.cff is valid CFF 1.2 with the paper as its preferred citation."""

import pathlib
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_license_is_the_same_everywhere():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  text = (ROOT / "LICENSE").read_text()
  assert project["license"]["text"] == citation["license"] == "Apache-2.0"
  assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_the_citation_file_has_cffs_required_keys_and_the_paper():
  citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  assert citation["cff-version"] == "1.2.0"
  assert {"message", "title", "authors"} <= set(citation)
  paper = citation["preferred-citation"]
  assert {"type", "title", "authors"} <= set(paper) and paper["title"].startswith("ZegOT: Zero-shot Segmentation")
  assert all({"family-names", "given-names"} <= set(a) for a in paper["authors"])
  assert paper["url"] == f"https://arxiv.org/abs/{paper['identifiers'][0]['value'].removeprefix('arXiv:')}"
  assert str(citation["version"]) == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
