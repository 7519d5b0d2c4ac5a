"""The container image and the package list agree: every package setup.cfg ships is copied into the image."""
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shipped_top_level_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    names = cfg["options.packages.find"]["include"].split()
    return {name for name in names if "." not in name}


def copied_into_image() -> set[str]:
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return {part.rstrip("/") for line in copies for part in line.split()}


def test_the_image_copies_every_shipped_package():
    missing = shipped_top_level_packages() - copied_into_image()
    assert not missing, f"Dockerfile does not COPY {sorted(missing)}; the image would fail to import them"


def test_every_shipped_package_exists():
    for name in shipped_top_level_packages():
        assert (ROOT / name / "__init__.py").exists(), name
