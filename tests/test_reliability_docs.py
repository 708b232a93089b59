"""The README's reliability section lists every exit code verydeep.errors defines."""

import re
from pathlib import Path

from verydeep.errors import EXIT_CODES


def test_the_readme_lists_every_exit_code():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Reliability", 1)[1]
    listed = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert listed == set(EXIT_CODES)
