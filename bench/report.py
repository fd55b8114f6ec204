"""What the bench scripts share: their sections of BENCHMARKS.md."""

import os


def replace_section(path, start_mark, end_mark, section):
    """Puts `section` (which begins with `start_mark` and ends with `end_mark`) in the file at
    `path` in place of the one between the marks, or at its end if there is none."""
    text = open(path).read() if os.path.exists(path) else ""
    if start_mark in text and end_mark in text:
        before, rest = text.split(start_mark, 1)
        after = rest.split(end_mark, 1)[1].lstrip("\n")
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)
