"""``python -m monai_advseg demo ...`` (the main job) and ``python -m monai_advseg report compare ...``."""

from __future__ import annotations

import sys


def main() -> int:
    commands = {"demo": "monai_advseg.demo", "report": "monai_advseg.report"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m monai_advseg {demo,report} ...   (demo --help for options)", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(commands[sys.argv[1]])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
