"""``python -m monai_advseg demo ...`` (the main job), ``report compare ...`` and ``robustness --bundle_root ...``."""

from __future__ import annotations

import sys


def main() -> int:
    commands = {"demo": "monai_advseg.demo", "report": "monai_advseg.report", "robustness": "monai_advseg.robustness"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(
            "usage: python -m monai_advseg {demo,report,robustness} ...   (<command> --help for options)",
            file=sys.stderr,
        )
        return 2
    import importlib

    module = importlib.import_module(commands[sys.argv[1]])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
