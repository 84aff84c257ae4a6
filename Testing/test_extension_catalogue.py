"""The Slicer Extensions Catalogue's checks (Slicer/ExtensionsIndex scripts/check_description_files.py)
that can run offline: the description file ``MedSeg.json`` against the catalogue entry schema's rules
(Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.0.json), its name against the
CMake project, the repository name, the icon and screenshot URLs pointing at files this repository holds,
and the licence file at the root."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.0.json#"
#: the raw-file prefix of this repository's main branch, where the catalogue fetches images
RAW_PREFIX = "https://raw.githubusercontent.com/medseg/SlicerMedSeg/main/"


def _cmake_value(cmake: str, key: str) -> str:
    found = re.findall(rf'set\s*\({key}\s*"([^"]*)"\s*\)', cmake, re.IGNORECASE)
    assert found, f"{key} is not set in CMakeLists.txt"
    return found[0].strip()


def test_description_file_matches_the_catalogue_rules():
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.findall(r"project\s*\(\s*([^\s)]+)", cmake, re.IGNORECASE)[0]
    entry_path = REPO_ROOT / f"{project}.json"          # the file name is the extension name
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    assert entry["$schema"] == SCHEMA_URL
    for key in ("category", "scm_url"):                # required by the schema
        assert isinstance(entry[key], str) and entry[key]
    assert entry["category"] == _cmake_value(cmake, "EXTENSION_CATEGORY") == "Segmentation"
    url = urlsplit(entry["scm_url"])
    assert url.scheme in ("https", "git")
    assert "slicer" in Path(url.path).stem.lower()     # check_git_repository_name
    assert entry["build_dependencies"] == _cmake_value(cmake, "EXTENSION_DEPENDS").split()
    assert entry.get("build_subdirectory", ".") == "."  # not a superbuild
    assert _cmake_value(cmake, "EXTENSION_HOMEPAGE") == entry["scm_url"].removesuffix(".git")


def test_icon_and_screenshots_are_images_in_this_repository():
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = [_cmake_value(cmake, "EXTENSION_ICONURL"), *_cmake_value(cmake, "EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 2, "at least one screenshot"
    for url in urls:
        assert url.startswith(RAW_PREFIX), url
        local = REPO_ROOT / url.removeprefix(RAW_PREFIX)
        with Image.open(local) as img:                  # a real PNG, not a placeholder
            assert img.format == "PNG" and min(img.size) >= 128, (url, img.size)


def test_licence_at_the_root_matches_the_package_metadata():
    licence = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = \{ text = "BSD-3-Clause" \}', pyproject, re.MULTILINE)
    assert licence.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder" in licence
